"""The `llm` labeler: an OpenAI-compatible chat-completions endpoint names the concept chain of each image.

One request per image asks, from the image's captions, for level1..level4 (level1 an event or theme rather than
an object; each higher level generalises the one below), concept-level captions that never name a level word,
and hard-negative level1 concepts.

The client. Requests go through the official `openai` client, ``openai.OpenAI(base_url=..., api_key=...,
timeout=..., max_retries=...)``, shared by a pool of ``concurrency`` threads. The client retries 408, 409, 429
and 5xx answers, timeouts and connection errors itself (exponential backoff with jitter; a Retry-After header
sets the wait); a malformed answer is asked again here, up to ``max_retries`` times. What still fails is a
`LabelFailure` whose reason names the cause ("connection refused to 127.0.0.1:8000 after 4 attempts"); 401, 403,
404 and redirects stop the build. Valid answers are kept in an SQLite cache keyed by (model, messages,
temperature). The endpoint is ``base_url``, else ``CLEARGLASS_LLM_BASE_URL``, else ``OPENAI_BASE_URL`` as the
client reads it; there is no default, so captions never go to a cloud service unasked. The key is ``api_key``,
else ``CLEARGLASS_LLM_API_KEY``, else ``OPENAI_API_KEY``; without one no Authorization header is sent.

Answer layout (``structured``). ``json_schema`` sends ``response_format={"type": "json_schema", ...}`` with
`ANSWER_SCHEMA`, so servers that constrain decoding (OpenAI, vLLM guided decoding, llama.cpp) return one JSON
object; ``off`` asks for an ``<output>`` block of tags; ``auto`` (the default) sends the first request with the
schema and, when the server refuses it (a 4xx answer) but answers the same request with tags, warns once, notes
it in ``stats`` and asks for tags from then on. Either layout is checked against the same rules (`ANSWER_SCHEMA`,
then `checked_label`), after any ``<think>`` section is removed.

Keys stay home. The API key is sent to the configured base URL only: redirects are not followed at all (an
OpenAI-compatible endpoint answers the POST it is sent; following a redirect would carry the ``Authorization``
header wherever it points, and httpx's own rule of dropping it across origins still sends it to another path of
the same origin). A 3xx answer stops the build naming its Location, so the user can fix ``--llm-base-url``.
Every error message and failure reason is scrubbed of the key before it is raised, counted or stored.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import httpx
import openai
from tqdm import tqdm

from clearglass.errors import ClearglassError
from clearglass.magic.labelers import ConceptLabel, LabelFailure
from clearglass.magic.leak import leaked_words
from clearglass.magic.llm_cache import LLMCache, request_key
from clearglass.magic.sources import SourceItem

URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)  # scheme://user:pw@host
ENV_PREFIX = "CLEARGLASS_LLM_"  # CLEARGLASS_LLM_BASE_URL, _MODEL, _API_KEY, _TIMEOUT_S, ...: one per LLMConfig field
STRUCTURED = ("auto", "json_schema", "off")

_INSTRUCTIONS = """\
You name the concepts that a photograph stands for, judging only from its captions.

A concept is a broad idea that gathers many different scenes under one name. It can be concrete \
(like "wildlife", which covers every wild animal in its habitat) or abstract (like "freedom", which covers \
being free of constraint in social, political and personal life).

Given the captions of one image, answer with:
1. level1: the main concept of the image. It is general, but not too general: name the event, activity \
or theme that the scene is about, not the objects in it (prefer "Birthday Party" to "Cake", "Commerce" to \
"Shop Counter").
2. level2, level3, level4: each a broader idea that contains the concept just below it (level2 contains \
level1, and so on), ending with a very general idea about human life or the world. No two levels are the same.
3. New captions: each describes the scene at the level of the level1 concept instead of its details, is \
about as long as an original caption, is true of every original caption, and never uses any word of the \
four concept names.
4. Hard negatives: other level1 concepts that are close to this one and easy to confuse with it, but wrong \
for this image.

Every concept is a short phrase of one to four words in canonical vocabulary: singular nouns, present \
tense, Title Case. Give no explanation. """

SYSTEM_PROMPT = _INSTRUCTIONS + """\
Answer with this block only, one tag per line:
<output>
<level1>...</level1>
<level2>...</level2>
<level3>...</level3>
<level4>...</level4>
<caption>...</caption>
<hard_negative>...</hard_negative>
</output>"""

JSON_SYSTEM_PROMPT = _INSTRUCTIONS + """\
Answer with one JSON object only: the strings level1, level2, level3 and level4, and the lists of strings \
captions and hard_negatives."""

_TEXTS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
ANSWER_SCHEMA: dict = {
    "type": "object",
    "properties": {**{f"level{i}": {"type": "string"} for i in range(1, 5)},
                   "captions": _TEXTS, "hard_negatives": _TEXTS},
    "required": ["level1", "level2", "level3", "level4", "captions", "hard_negatives"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema",
                   "json_schema": {"name": "concept_chain", "strict": True, "schema": ANSWER_SCHEMA}}

USER_TEMPLATE = """\
Captions:
{captions}
Write {n_captions} new captions and {n_negatives} hard negatives."""

# Few-shot turns, written for this project: (captions, level1..level4, new captions, hard negatives).
EXAMPLES: tuple[tuple[tuple[str, ...], tuple[str, str, str, str], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        (
            "Two children lean over a cake covered in lit candles.",
            "A little girl blows out the candles while her friends watch.",
            "Kids wearing paper hats sit around a table with a cake.",
        ),
        ("Birthday Party", "Celebration", "Tradition", "Culture"),
        (
            "Young friends gather to mark a special day together.",
            "A girl is cheered on by her guests on her big day.",
            "Children share sweets and laughter at a festive table.",
        ),
        ("Wedding", "Graduation", "Picnic"),
    ),
    (
        (
            "A surfer rides the curl of a large blue wave.",
            "A man in a wetsuit balances on a board in the ocean.",
            "Someone surfing near the shore on a sunny day.",
        ),
        ("Water Sport", "Recreation", "Leisure", "Human Activity"),
        (
            "A person enjoys the thrill of the sea on a board.",
            "An athlete keeps his balance as the ocean moves under him.",
            "Someone spends a bright afternoon playing in the waves.",
        ),
        ("Sailing", "Swimming", "Skateboarding"),
    ),
    (
        (
            "Stalls of fresh vegetables line a busy street.",
            "People buy fruit from vendors under colourful umbrellas.",
            "A crowded open-air bazaar on a weekend morning.",
        ),
        ("Street Market", "Commerce", "Economy", "Society"),
        (
            "Vendors sell the day's produce to passing shoppers.",
            "A crowd shops for food on a lively morning.",
            "Neighbours buy and sell fresh goods outdoors.",
        ),
        ("Grocery Shopping", "Farming", "Festival"),
    ),
)

_OUTPUT = re.compile(r"<output>(.*?)</output>", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S)  # reasoning models served locally often prepend one
_TAG = re.compile(r"<(level[1-4]|caption|hard_negative)>(.*?)</\1>", re.S)
_MAX_CONCEPT_WORDS = 6
MAX_ANSWER_BYTES = 256 * 1024  # a whole answer is a few hundred bytes; a larger one is refused, never stored


class MalformedAnswer(ValueError):
    """An answer that does not follow the requested layout (tags or the JSON schema) or its rules."""


class _Unavailable(Exception):
    """The client's retries are spent (timeouts, connection errors, 408/409/429/5xx): this image fails."""


class _Refused(Exception):
    """The endpoint refused this one request (a 4xx other than 401/403/404/408/409/429); asking again will not help."""


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask: endpoint, model, key, concurrency, timeout, retries, answer layout, cache."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3
    temperature: float = 0.7
    max_new_captions: int = 5
    n_hard_negatives: int = 3
    structured: str = "auto"
    cache_path: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ClearglassError(
                f"LLM base URL {self.base_url!r}: expected http(s)://HOST[:PORT]/PATH "
                f"(set --llm-base-url or {ENV_PREFIX}BASE_URL)"
            )
        if not self.model:
            raise ClearglassError(f"LLM model name is empty: set --llm-model or {ENV_PREFIX}MODEL")
        if self.structured not in STRUCTURED:
            raise ClearglassError(f"LLM labeler setting structured={self.structured!r}: expected one of {STRUCTURED}")
        checks = {
            "concurrency": self.concurrency >= 1,
            "timeout_s": self.timeout_s > 0,
            "max_retries": self.max_retries >= 0,
            "max_new_captions": self.max_new_captions >= 1,
            "n_hard_negatives": self.n_hard_negatives >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ClearglassError(f"LLM labeler setting {name}={getattr(self, name)!r} is out of range")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> LLMConfig:
        """Explicit settings first (None = unset), then CLEARGLASS_LLM_<FIELD> variables, then the defaults.

        The API key also falls back to OPENAI_API_KEY and the base URL to OPENAI_BASE_URL, as the openai client
        reads them. Base URL and model have no default.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            given = overrides.pop(f.name, None)
            variable = ENV_PREFIX + f.name.upper()
            if given is not None:
                values[f.name] = Path(given) if f.name == "cache_path" else given
            elif env.get(variable):
                values[f.name] = _from_text(env[variable], f.type, variable)
        if overrides:
            raise ClearglassError(f"unknown llm labeler settings {sorted(overrides)}: expected LLMConfig fields")
        for name, variable in (("api_key", "OPENAI_API_KEY"), ("base_url", "OPENAI_BASE_URL")):
            if name not in values and env.get(variable):
                values[name] = env[variable]
        if "base_url" not in values:
            raise ClearglassError(f"the llm labeler needs an endpoint: pass --llm-base-url or set {ENV_PREFIX}BASE_URL "
                                  "(or OPENAI_BASE_URL)")
        if "model" not in values:
            raise ClearglassError(f"the llm labeler needs a model name: pass --llm-model or set {ENV_PREFIX}MODEL")
        values["base_url"] = str(values["base_url"]).rstrip("/")
        return cls(**values)


def _from_text(text: str, annotation: str, variable: str) -> object:
    """An environment variable's value as the field type named by `annotation` (int, float, bool, Path, str)."""
    try:
        if annotation == "int":
            return int(text)
        if annotation == "float":
            return float(text)
    except ValueError:
        raise ClearglassError(f"environment variable {variable}={text!r}: expected a {annotation}") from None
    if annotation == "bool":
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ClearglassError(f"environment variable {variable}={text!r}: expected true or false")
        return text.lower() in ("1", "true", "yes")
    return Path(text) if annotation.startswith("Path") else text


def build_messages(captions: list[str], config: LLMConfig, structured: bool = False) -> list[dict[str, str]]:
    """The chat messages for one image: system instruction, few-shot turns, then the image's captions.

    ``structured`` asks for (and shows) the JSON object of `ANSWER_SCHEMA` instead of the ``<output>`` tags.
    """
    messages = [{"role": "system", "content": JSON_SYSTEM_PROMPT if structured else SYSTEM_PROMPT}]
    for example_captions, levels, new_captions, negatives in EXAMPLES:
        messages.append({"role": "user", "content": _user_turn(example_captions, len(new_captions), len(negatives))})
        messages.append({"role": "assistant", "content": _answer_text(levels, new_captions, negatives, structured)})
    n_captions = min(len(captions), config.max_new_captions)
    messages.append({"role": "user", "content": _user_turn(captions, n_captions, config.n_hard_negatives)})
    return messages


def _user_turn(captions: tuple[str, ...] | list[str], n_captions: int, n_negatives: int) -> str:
    lines = "\n".join(f"- {' '.join(c.split())}" for c in captions)
    return USER_TEMPLATE.format(captions=lines, n_captions=n_captions, n_negatives=n_negatives)


def _answer_text(levels: tuple[str, ...], captions: tuple[str, ...], negatives: tuple[str, ...],
                 structured: bool) -> str:
    """An answer in the requested layout: the JSON object, or the ``<output>`` block with one tag per line."""
    if structured:
        answer = {f"level{i}": name for i, name in enumerate(levels, start=1)}
        return json.dumps(answer | {"captions": list(captions), "hard_negatives": list(negatives)}, ensure_ascii=False)
    lines = [f"<level{i}>{name}</level{i}>" for i, name in enumerate(levels, start=1)]
    lines += [f"<caption>{c}</caption>" for c in captions]
    lines += [f"<hard_negative>{n}</hard_negative>" for n in negatives]
    return "<output>\n" + "\n".join(lines) + "\n</output>"


def canonical_concept(text: str) -> str:
    """Collapse whitespace, drop a trailing full stop, upper-case the first letter of each word."""
    words = text.strip().rstrip(".").split()
    return " ".join(w[:1].upper() + w[1:] for w in words)


def parse_answer(text: str) -> ConceptLabel:
    """Parse the one `<output>` section (outside any `<think>`): one tag per level, 1+ captions, 1+ hard negatives."""
    blocks = _OUTPUT.findall(_THINK.sub("", text))
    if len(blocks) != 1:
        raise MalformedAnswer(f"expected exactly one <output>...</output> section, found {len(blocks)}")
    body = blocks[0]
    leftover = _TAG.sub("", body).strip()
    if leftover:
        raise MalformedAnswer(f"unexpected text in <output>: {leftover[:80]!r}")
    found: dict[str, list[str]] = {}
    for tag, value in _TAG.findall(body):
        found.setdefault(tag, []).append(" ".join(value.split()))
    levels = []
    for i in range(1, 5):
        values = found.get(f"level{i}", [])
        if len(values) != 1:
            raise MalformedAnswer(f"expected exactly one <level{i}> tag, found {len(values)}")
        levels.append(values[0])
    return checked_label(levels, found.get("caption", []), found.get("hard_negative", []))


def parse_json_answer(text: str) -> ConceptLabel:
    """Parse the JSON object of `ANSWER_SCHEMA` (outside any `<think>`), checked against the schema, then the rules."""
    body = _THINK.sub("", text).strip()
    try:
        value = json.loads(body)
    except ValueError:
        raise MalformedAnswer(f"not a JSON object: {body[:80]!r}") from None
    check_schema(value, ANSWER_SCHEMA, "answer")
    levels = [value[f"level{i}"] for i in range(1, 5)]
    captions = [" ".join(c.split()) for c in value["captions"]]
    return checked_label(levels, captions, [" ".join(n.split()) for n in value["hard_negatives"]])


def check_schema(value: object, schema: dict, where: str) -> None:
    """Raise `MalformedAnswer` unless ``value`` fits ``schema``, in the subset `ANSWER_SCHEMA` uses: objects
    (required keys, no others), arrays (minItems, items) and strings."""
    kind = schema["type"]
    if kind == "object":
        if not isinstance(value, dict):
            raise MalformedAnswer(f"{where}: expected a JSON object, got {type(value).__name__}")
        missing = [k for k in schema["required"] if k not in value]
        extra = sorted(set(value) - set(schema["properties"]))
        if missing or extra:
            raise MalformedAnswer(f"{where}: missing keys {missing}, unexpected keys {extra}")
        for key, item in value.items():
            check_schema(item, schema["properties"][key], f"{where}.{key}")
    elif kind == "array":
        if not isinstance(value, list) or len(value) < schema.get("minItems", 0):
            raise MalformedAnswer(f"{where}: expected a list of at least {schema.get('minItems', 0)} items")
        for i, item in enumerate(value):
            check_schema(item, schema["items"], f"{where}[{i}]")
    elif not isinstance(value, str):
        raise MalformedAnswer(f"{where}: expected a string, got {type(value).__name__}")


def checked_label(levels: list[str], captions: list[str], negatives: list[str]) -> ConceptLabel:
    """The label, if it keeps the rules: four short distinct concepts, 1+ captions that name none of their words,
    1+ hard negatives other than level1; concepts canonical (`canonical_concept`)."""
    names = []
    for i, value in enumerate(levels, start=1):
        name = canonical_concept(value)
        if not name or len(name.split()) > _MAX_CONCEPT_WORDS or "<" in name:
            raise MalformedAnswer(f"level{i} {value!r} is not a short concept phrase")
        names.append(name)
    if len({name.casefold() for name in names}) != 4:
        raise MalformedAnswer(f"levels repeat a concept: {names}")
    if not captions or not all(captions):
        raise MalformedAnswer("expected one or more non-empty captions")
    for caption in captions:
        leaks = leaked_words(caption, names)
        if leaks:
            raise MalformedAnswer(f"caption {caption!r} names level words {leaks}")
    negatives = [canonical_concept(n) for n in negatives]
    if not negatives or not all(negatives):
        raise MalformedAnswer("expected one or more non-empty hard_negative entries")
    if any(n.casefold() == names[0].casefold() for n in negatives):
        raise MalformedAnswer(f"a hard negative repeats level1 {names[0]!r}")
    return ConceptLabel(levels=tuple(names), new_captions=captions, hard_negatives=negatives)


class LLMLabeler:
    """Labels images by asking an OpenAI-compatible chat endpoint, in parallel, with retries and a cache."""

    name = "llm"

    def __init__(self, **settings: object) -> None:
        """Settings are `LLMConfig` fields; base_url, model and api_key fall back to the environment."""
        config = LLMConfig.from_env(**settings)
        self.config = config
        self.url = f"{config.base_url}/chat/completions"
        self.cache = LLMCache(config.cache_path) if config.cache_path is not None else None
        # structured: "auto" until the first answer to a json_schema request decides "json_schema" or "off"
        self.stats: dict[str, int | str] = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                                            "structured": config.structured}
        self._lock = threading.Lock()
        self._probe = threading.Lock()  # held by the first auto-mode request while it probes the schema
        self._probed = threading.Event()
        self._local = threading.local()  # requests sent by this thread for the image it is labelling
        http = openai.DefaultHttpxClient(follow_redirects=False, event_hooks={"request": [self._on_request]})
        # without a key the Authorization header is omitted on every request, so the placeholder is never sent
        self.client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key or "unused",
                                    timeout=config.timeout_s, max_retries=config.max_retries, http_client=http)
        self._headers = {} if config.api_key else {"Authorization": openai.Omit()}

    def label_many(self, items: list[SourceItem]) -> list[ConceptLabel | LabelFailure]:
        """One label or failure per item, in item order; up to `concurrency` requests in flight."""
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="clearglass-llm")
        try:
            futures = [pool.submit(self.label_one, item) for item in items]
            done = as_completed(futures)
            for future in tqdm(done, total=len(futures), desc="llm labels", disable=not self.config.progress):
                future.result()  # re-raise a configuration error at once
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def label_one(self, item: SourceItem) -> ConceptLabel | LabelFailure:
        """Label one image: a cached answer, else ask up to 1 + max_retries times while the answer is malformed."""
        if not item.captions:
            return self._fail(item, "no captions to label from")
        cached = self._cached(item.captions)
        if cached is not None:
            self._count("cache_hits")
            return cached
        self._local.sent = 0
        try:
            for _ in range(self.config.max_retries + 1):
                try:
                    structured, text = self._ask(item.captions)
                    label = (parse_json_answer if structured else parse_answer)(text)
                except MalformedAnswer as e:
                    problem = str(e)
                    continue
                if self.cache is not None:
                    self.cache.put(self._key(item.captions, structured), text)
                return label
            return self._fail(item, f"malformed answer after {_attempts(self._local.sent)}: {problem}")
        except _Unavailable as e:
            return self._fail(item, f"{e} after {_attempts(self._local.sent)}")
        except _Refused as e:
            return self._fail(item, f"endpoint refused the request: {e}")
        finally:
            self._count("retries", max(0, self._local.sent - 1))

    def _key(self, captions: list[str], structured: bool) -> str:
        messages = build_messages(captions, self.config, structured)
        return request_key(self.config.model, messages, self.config.temperature)

    def _cached(self, captions: list[str]) -> ConceptLabel | None:
        """A valid cached answer in a layout the current mode may use (auto: JSON, then tags), or None."""
        if self.cache is None:
            return None
        layouts = {"auto": (True, False), "json_schema": (True,), "off": (False,)}[str(self.stats["structured"])]
        for structured in layouts:
            text = self.cache.get(self._key(captions, structured))
            if text is not None:
                try:
                    return (parse_json_answer if structured else parse_answer)(text)
                except MalformedAnswer:
                    pass  # stored under an older parser that was less strict: ask again and replace it
        return None

    def _ask(self, captions: list[str]) -> tuple[bool, str]:
        """(structured?, answer text) of one request. In auto mode the first request probes the schema while the
        others wait for its outcome (if it decides nothing, auto requests go on in parallel)."""
        if self.stats["structured"] == "auto" and not self._probed.is_set():
            with self._probe:
                if not self._probed.is_set():
                    try:
                        return self._ask_auto(captions)
                    finally:
                        self._probed.set()
        if self.stats["structured"] == "auto":
            return self._ask_auto(captions)
        structured = self.stats["structured"] == "json_schema"
        return structured, self._complete(captions, structured)

    def _ask_auto(self, captions: list[str]) -> tuple[bool, str]:
        """Ask with the schema; an answer keeps json_schema. A refusal asks again with tags: if that is answered,
        the server refused the schema and tags are used from then on (said once); if not, nothing is decided."""
        try:
            text = self._complete(captions, structured=True)
        except _Refused as e:
            text = self._complete(captions, structured=False)
            self._fall_back(str(e))
            return False, text
        with self._lock:
            if self.stats["structured"] == "auto":
                self.stats["structured"] = "json_schema"
        return True, text

    def _fall_back(self, reason: str) -> None:
        """Switch auto mode to tags, once, with a warning and the reason in ``stats``."""
        reason = self._scrub(reason)
        with self._lock:
            if self.stats["structured"] != "auto":
                return
            self.stats["structured"] = "off"
            self.stats["structured_fallback"] = reason
        warnings.warn(f"POST {self._scrub(self.url)}: the server refused response_format json_schema ({reason}); "
                      "asking for <output> tags instead (--llm-structured off skips the attempt)", stacklevel=2)

    def _complete(self, captions: list[str], structured: bool) -> str:
        """Send one chat-completions request (the client retries transient failures) and return the answer text.
        Each attempt must be answered whole within ``timeout_s`` (a server trickling bytes does not extend it) and
        in at most `MAX_ANSWER_BYTES`."""
        extra = {"response_format": RESPONSE_FORMAT} if structured else {}
        try:
            with self.client.chat.completions.with_streaming_response.create(
                    model=self.config.model, messages=build_messages(captions, self.config, structured),
                    temperature=self.config.temperature, extra_headers=self._headers, **extra) as response:
                body = self._body(response.iter_bytes())
        except (openai.APITimeoutError, httpx.TimeoutException):
            raise _Unavailable(f"timed out (timeout {self.config.timeout_s:g} s)") from None
        except openai.APIConnectionError as e:
            raise _Unavailable(_connection_failure(e, self.config.base_url)) from None
        except httpx.HTTPError as e:  # the connection broke while the body was read
            raise _Unavailable(f"the answer broke off: {e}") from None
        except openai.APIStatusError as e:
            self._status_error(e)
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, TypeError, IndexError, KeyError):  # not JSON, or JSON of another shape
            raise MalformedAnswer(f"not a chat-completions response: {body[:80]!r}") from None
        if not isinstance(content, str):
            raise MalformedAnswer(f"message content is {type(content).__name__}, expected text")
        if self.config.api_key and self.config.api_key in content:
            raise MalformedAnswer("the answer repeats the API key")  # never cached, never in a dataset
        return content

    def _body(self, chunks: Iterator[bytes]) -> bytes:
        """The answer's bytes, read until ``timeout_s`` after the request was sent and up to `MAX_ANSWER_BYTES`."""
        deadline = self._local.sent_at + self.config.timeout_s
        parts: list[bytes] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise MalformedAnswer(f"the answer runs over {MAX_ANSWER_BYTES:,} bytes; refused")
            if time.monotonic() > deadline:
                raise _Unavailable("timed out (the whole answer takes over the timeout of "
                                   f"{self.config.timeout_s:g} s)")
            parts.append(chunk)
        return b"".join(parts)

    def _status_error(self, error: openai.APIStatusError) -> NoReturn:
        """Map an HTTP error answer (after the client's retries) to a configuration error, a failure or a refusal."""
        status = error.status_code
        detail = self._scrub(error.response.text)[:200]  # scrubbed before the cut: no key fragment survives
        if 300 <= status < 400:
            location = error.response.headers.get("Location", "(no Location)")
            raise self._error(f"POST {self.url}: HTTP {status} redirect to {location}: the llm labeler follows no "
                              "redirects, so the API key goes nowhere else; set --llm-base-url to the address "
                              "that answers")
        if status in (401, 403, 404):
            hint = "check the API key" if status != 404 else f"check the base URL and model {self.config.model!r}"
            raise self._error(f"POST {self.url}: HTTP {status} ({hint}): {detail}")
        if status in (408, 409, 429) or status >= 500:
            raise _Unavailable(f"HTTP {status}")
        raise _Refused(f"HTTP {status}: {detail}")

    def _on_request(self, request: httpx.Request) -> None:
        """httpx event hook: count every request sent, the client's retries included."""
        self._local.sent = getattr(self._local, "sent", 0) + 1
        self._local.sent_at = time.monotonic()  # an attempt's answer is due timeout_s after it is sent
        self._count("requests")

    def _scrub(self, text: str) -> str:
        """The text with the API key (in any letter case) and any URL's user:password replaced by placeholders."""
        text = URL_CREDENTIALS.sub(r"\1[credentials]@", text)
        if not self.config.api_key:
            return text
        return re.sub(re.escape(self.config.api_key), "[API key]", text, flags=re.IGNORECASE)

    def _error(self, message: str) -> ClearglassError:
        return ClearglassError(self._scrub(message))

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    def _fail(self, item: SourceItem, reason: str) -> LabelFailure:
        self._count("failures")
        return LabelFailure(item.image, self._scrub(reason))

    def close(self) -> None:
        """Close the HTTP client and the answer cache."""
        self.client.close()
        if self.cache is not None:
            self.cache.close()


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _connection_failure(error: openai.APIConnectionError, base_url: str) -> str:
    """"connection refused to HOST:PORT", or "cannot connect to HOST:PORT: <innermost cause>"."""
    parts = urlsplit(base_url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    cause: BaseException = error
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
        return f"connection refused to {where}"
    return f"cannot connect to {where}: {cause}"
