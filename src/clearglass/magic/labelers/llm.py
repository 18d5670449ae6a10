"""The `llm` labeler: an OpenAI-compatible chat-completions endpoint names the concept chain of each image.

One request per image (POST ``{base_url}/chat/completions``) asks, from the image's captions, for
level1..level4 (level1 an event or theme rather than an object; each higher level generalises the one below),
concept-level captions that never name a level word, and hard-negative level1 concepts, all in one
``<output>`` section that is parsed strictly. Requests run in a thread pool; 408/429/5xx answers, timeouts,
connection errors and malformed answers are retried with exponential backoff and jitter, then returned as a
``LabelFailure``. Valid answers are kept in an SQLite cache keyed by (model, messages, temperature).
Only the standard library's HTTP client is used.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path

from tqdm import tqdm

from clearglass.errors import ClearglassError
from clearglass.magic.labelers import ConceptLabel, LabelFailure
from clearglass.magic.leak import leaked_words
from clearglass.magic.llm_cache import LLMCache, request_key
from clearglass.magic.sources import SourceItem

ENV_PREFIX = "CLEARGLASS_LLM_"  # CLEARGLASS_LLM_BASE_URL, _MODEL, _API_KEY, _TIMEOUT_S, ...: one per LLMConfig field

SYSTEM_PROMPT = """\
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
tense, Title Case. Give no explanation. Answer with this block only, one tag per line:
<output>
<level1>...</level1>
<level2>...</level2>
<level3>...</level3>
<level4>...</level4>
<caption>...</caption>
<hard_negative>...</hard_negative>
</output>"""

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


class MalformedAnswer(ValueError):
    """An answer that does not follow the requested `<output>` layout."""


class _Retryable(Exception):
    """A transient failure: the request is sent again after a backoff."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class _Rejected(Exception):
    """The endpoint refused this one request (a 4xx other than 408/429); asking again will not help."""


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask: endpoint, model, key, concurrency, timeout, retries, backoff, cache."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    temperature: float = 0.7
    max_new_captions: int = 5
    n_hard_negatives: int = 3
    cache_path: Path | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ClearglassError(
                f"LLM base URL {self.base_url!r}: expected http(s)://HOST[:PORT]/PATH "
                f"(set --llm-base-url or {ENV_PREFIX}BASE_URL)"
            )
        if not self.model:
            raise ClearglassError(f"LLM model name is empty: set --llm-model or {ENV_PREFIX}MODEL")
        checks = {
            "concurrency": self.concurrency >= 1,
            "timeout_s": self.timeout_s > 0,
            "max_retries": self.max_retries >= 0,
            "backoff_s": self.backoff_s >= 0,
            "backoff_max_s": self.backoff_max_s >= self.backoff_s,
            "max_new_captions": self.max_new_captions >= 1,
            "n_hard_negatives": self.n_hard_negatives >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ClearglassError(f"LLM labeler setting {name}={getattr(self, name)!r} is out of range")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> LLMConfig:
        """Explicit settings first (None = unset), then CLEARGLASS_LLM_<FIELD> variables, then the defaults.

        The API key also falls back to OPENAI_API_KEY. Base URL and model have no default.
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
        if "api_key" not in values and env.get("OPENAI_API_KEY"):
            values["api_key"] = env["OPENAI_API_KEY"]
        if "base_url" not in values:
            raise ClearglassError(f"the llm labeler needs an endpoint: pass --llm-base-url or set {ENV_PREFIX}BASE_URL")
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


def build_messages(captions: list[str], config: LLMConfig) -> list[dict[str, str]]:
    """The chat messages for one image: system instruction, few-shot turns, then the image's captions."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example_captions, levels, new_captions, negatives in EXAMPLES:
        messages.append({"role": "user", "content": _user_turn(example_captions, len(new_captions), len(negatives))})
        lines = [f"<level{i}>{name}</level{i}>" for i, name in enumerate(levels, start=1)]
        lines += [f"<caption>{c}</caption>" for c in new_captions]
        lines += [f"<hard_negative>{n}</hard_negative>" for n in negatives]
        messages.append({"role": "assistant", "content": "<output>\n" + "\n".join(lines) + "\n</output>"})
    n_captions = min(len(captions), config.max_new_captions)
    messages.append({"role": "user", "content": _user_turn(captions, n_captions, config.n_hard_negatives)})
    return messages


def _user_turn(captions: tuple[str, ...] | list[str], n_captions: int, n_negatives: int) -> str:
    lines = "\n".join(f"- {' '.join(c.split())}" for c in captions)
    return USER_TEMPLATE.format(captions=lines, n_captions=n_captions, n_negatives=n_negatives)


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
        name = canonical_concept(values[0])
        if not name or len(name.split()) > _MAX_CONCEPT_WORDS or "<" in name:
            raise MalformedAnswer(f"level{i} {values[0]!r} is not a short concept phrase")
        levels.append(name)
    if len({name.casefold() for name in levels}) != 4:
        raise MalformedAnswer(f"levels repeat a concept: {levels}")
    captions = found.get("caption", [])
    if not captions or not all(captions):
        raise MalformedAnswer("expected one or more non-empty <caption> tags")
    for caption in captions:
        leaks = leaked_words(caption, levels)
        if leaks:
            raise MalformedAnswer(f"caption {caption!r} names level words {leaks}")
    negatives = [canonical_concept(n) for n in found.get("hard_negative", [])]
    if not negatives or not all(negatives):
        raise MalformedAnswer("expected one or more non-empty <hard_negative> tags")
    if any(n.casefold() == levels[0].casefold() for n in negatives):
        raise MalformedAnswer(f"a hard negative repeats level1 {levels[0]!r}")
    return ConceptLabel(levels=tuple(levels), new_captions=captions, hard_negatives=negatives)


class LLMLabeler:
    """Labels images by asking an OpenAI-compatible chat endpoint, in parallel, with retries and a cache."""

    name = "llm"

    def __init__(self, **settings: object) -> None:
        """Settings are `LLMConfig` fields; base_url, model and api_key fall back to the environment."""
        config = LLMConfig.from_env(**settings)
        self.config = config
        self.url = f"{config.base_url}/chat/completions"
        self.cache = LLMCache(config.cache_path) if config.cache_path is not None else None
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)

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
        """Label one image: cached answer, else ask up to 1 + max_retries times."""
        if not item.captions:
            return self._fail(LabelFailure(item.image, "no captions to label from"))
        messages = build_messages(item.captions, self.config)
        key = request_key(self.config.model, messages, self.config.temperature)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    label = parse_answer(cached)
                except MalformedAnswer:
                    label = None  # stored under an older parser that was less strict: ask again and replace it
                if label is not None:
                    self._count("cache_hits")
                    return label
        reasons: list[str] = []
        retry_after_s: float | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self._backoff_s(attempt - 1, retry_after_s))
            try:
                text = self._post(messages)
                label = parse_answer(text)
            except _Retryable as e:
                reasons.append(str(e))
                retry_after_s = e.retry_after_s
                continue
            except MalformedAnswer as e:
                reasons.append(f"malformed answer: {e}")
                retry_after_s = None
                continue
            except _Rejected as e:
                return self._fail(LabelFailure(item.image, f"endpoint refused the request: {e}"))
            if self.cache is not None:
                self.cache.put(key, text)
            return label
        summary = f"{len(reasons)} attempts failed; last: {reasons[-1]}"
        return self._fail(LabelFailure(item.image, summary))

    def _post(self, messages: list[dict[str, str]]) -> str:
        """Send one chat-completions request and return the assistant's text."""
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature}
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "clearglass"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        self._count("requests")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace")
            if e.code in (401, 403, 404):
                hint = "check the API key" if e.code != 404 else f"check the base URL and model {self.config.model!r}"
                raise ClearglassError(f"POST {self.url}: HTTP {e.code} ({hint}): {detail}") from None
            if e.code in (408, 429) or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}", _retry_after(e.headers.get("Retry-After"))) from None
            raise _Rejected(f"HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise MalformedAnswer(f"not a chat-completions response: {raw[:80]!r}") from None
        if not isinstance(content, str):
            raise MalformedAnswer(f"message content is {type(content).__name__}, expected text")
        return content

    def _backoff_s(self, k: int, retry_after_s: float | None) -> float:
        """delay_k = min(cap, base * 2^k) * (0.5 + 0.5 u), u ~ U[0, 1) seeded; at least Retry-After, up to the cap."""
        with self._lock:
            u = self._rng.random()
        delay = min(self.config.backoff_max_s, self.config.backoff_s * 2**k) * (0.5 + 0.5 * u)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.config.backoff_max_s))
        return delay

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _fail(self, failure: LabelFailure) -> LabelFailure:
        self._count("failures")
        return failure

    def close(self) -> None:
        """Close the answer cache."""
        if self.cache is not None:
            self.cache.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After header, or None."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
