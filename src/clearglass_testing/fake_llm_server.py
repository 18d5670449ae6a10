"""A real local HTTP server that speaks the chat-completions API with scripted answers, for tests and benchmarks.

`FakeLLMServer(script)` listens on 127.0.0.1 (a free port) in a thread. For each POST to /v1/chat/completions
it calls `script(body, index)` -> `Reply` (index counts requests from 0) and sends that reply: a valid answer made
from the captions, a scripted text, an HTTP error, a raw body, extra headers (Retry-After, Location), or any of
these after a delay. A request with ``response_format`` of type ``json_schema`` gets the valid answer as JSON
(`json_answer_for`) unless the server is made with ``structured=False``, when it answers 400 as servers without
guided decoding do. It counts requests, records each Authorization header and the most requests it held in
flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (keywords, level1..level4, concept-level caption, hard negatives); the first topic whose keyword occurs wins.
TOPICS: tuple[tuple[tuple[str, ...], tuple[str, str, str, str], str, tuple[str, ...]], ...] = (
    (
        ("pizza", "cake", "sandwich", "kitchen", "food", "eating"),
        ("Meal Preparation", "Cooking", "Domestic Task", "Daily Life"),
        "Someone gets a dish ready to share at home.",
        ("Restaurant Service", "Grocery Shopping"),
    ),
    (
        ("baseball", "tennis", "ball", "skate", "surf", "ski"),
        ("Team Sport", "Competition", "Recreation", "Human Activity"),
        "Players test their skill against each other outdoors.",
        ("Exercise", "Spectator Event"),
    ),
    (
        ("dog", "cat", "giraffe", "zebra", "elephant", "bird"),
        ("Wildlife", "Nature", "Ecosystem", "Environment"),
        "Animals go about their day in their habitat.",
        ("Pet Care", "Zoo Visit"),
    ),
)
FALLBACK_TOPIC = (
    (),
    ("Urban Scene", "City Life", "Community", "Society"),
    "People and places share an ordinary moment.",
    ("Rural Landscape", "Travel"),
)


def _topic(text: str) -> tuple[tuple[str, str, str, str], str, tuple[str, ...]]:
    """(levels, caption, hard negatives) of the first topic whose keyword the text names, else the fallback."""
    lowered = text.lower()
    _, levels, caption, negatives = next((t for t in TOPICS if any(k in lowered for k in t[0])), FALLBACK_TOPIC)
    return levels, caption, negatives


def answer_for(text: str) -> str:
    """A valid `<output>` answer for a prompt, chosen by the first topic whose keyword the last user turn names."""
    levels, caption, negatives = _topic(text)
    lines = [f"<level{i}>{name}</level{i}>" for i, name in enumerate(levels, start=1)]
    lines.append(f"<caption>{caption}</caption>")
    lines += [f"<hard_negative>{n}</hard_negative>" for n in negatives]
    return "<output>\n" + "\n".join(lines) + "\n</output>"


def json_answer_for(text: str) -> str:
    """The same answer as `answer_for`, as the JSON object the structured-output schema asks for."""
    levels, caption, negatives = _topic(text)
    answer = {f"level{i}": name for i, name in enumerate(levels, start=1)}
    return json.dumps(answer | {"captions": [caption], "hard_negatives": list(negatives)})


def wants_json_schema(body: dict) -> bool:
    """Whether a chat request asks for structured output with a JSON schema."""
    return isinstance(body.get("response_format"), dict) and body["response_format"].get("type") == "json_schema"


def last_user_text(body: dict) -> str:
    """The content of the last user message of a chat request."""
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def completion(body: dict, index: int, content: str | None) -> bytes:
    """A chat.completion body answering request ``index``: ``content``, or the topic answer to its last user text."""
    make = json_answer_for if wants_json_schema(body) else answer_for
    content = content if content is not None else make(last_user_text(body))
    payload = {"id": f"chatcmpl-{index}", "object": "chat.completion", "model": body.get("model"),
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
    return json.dumps(payload).encode()


@dataclass
class Reply:
    """One scripted reply: `content` (None = a valid answer for the captions), an HTTP error (its JSON body names
    `error_message`), a raw body, extra headers, a delay, and `trickle_s`: the body sent a byte at a time, one every
    `trickle_s` seconds (a server that never lets a read time out)."""

    status: int = 200
    content: str | None = None
    raw_body: bytes | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    error_message: str = "scripted"
    trickle_s: float = 0.0


def default_script(body: dict, index: int) -> Reply:
    """Always a valid answer."""
    return Reply()


class _Backlogged(ThreadingHTTPServer):
    """A listen backlog above any client concurrency: with the default 5, a burst of 16 connects loses SYNs and
    waits out the 1 s TCP retransmit, which a real endpoint behind a proper server would not."""

    request_queue_size = 128


class FakeLLMServer:
    """A threaded chat-completions server on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        script: Callable[[dict, int], Reply] = default_script,
        latency_s: float = 0.0,
        api_key: str | None = None,
        structured: bool = True,
    ) -> None:
        self.script = script
        self.latency_s = latency_s
        self.api_key = api_key
        self.structured = structured
        self.bodies: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Backlogged(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in /v1."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> int:
        """How many chat requests arrived."""
        with self._lock:
            return len(self.bodies)

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY, as real servers set it: on a kept-alive connection the body, written after the headers,
            # would otherwise wait for the client's delayed ACK (about 40 ms)
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                with server._lock:
                    index = len(server.bodies)
                    server.bodies.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self.counted = True
                try:
                    if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                        self._send(401, b'{"error": "bad key"}')
                        return
                    if wants_json_schema(body) and not server.structured:
                        self._send(400, b'{"error": {"message": "response_format json_schema is not supported"}}')
                        return
                    reply = server.script(body, index)
                    time.sleep(server.latency_s + reply.delay_s)
                    if reply.raw_body is not None:
                        self._send(reply.status, reply.raw_body, reply.headers)
                    elif reply.status != 200:
                        error = json.dumps({"error": {"message": reply.error_message}}).encode()
                        self._send(reply.status, error, reply.headers)
                    else:
                        self._send(200, completion(body, index, reply.content), trickle_s=reply.trickle_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer
                finally:
                    self._done()

            def _done(self) -> None:
                """Leave the in-flight count once, before the reply is written (the client may ask again at once)."""
                if getattr(self, "counted", False):
                    self.counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None,
                      trickle_s: float = 0.0) -> None:
                self._done()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not trickle_s:
                    self.wfile.write(data)
                for k in range(len(data) if trickle_s else 0):
                    self.wfile.write(data[k:k + 1])
                    self.wfile.flush()
                    time.sleep(trickle_s)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

        return Handler
