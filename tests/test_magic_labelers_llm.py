"""The `llm` labeler against a real local chat-completions server: parsing (tags and JSON schema), structured
output and its fallback, retries, failures, cache, concurrency, and the API key staying home."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import pytest

from clearglass.errors import ClearglassError
from clearglass.magic.labelers import ConceptLabel, Labeler, LabelFailure, make_labeler
from clearglass.magic.labelers.llm import (
    EXAMPLES,
    JSON_SYSTEM_PROMPT,
    RESPONSE_FORMAT,
    LLMConfig,
    LLMLabeler,
    MalformedAnswer,
    build_messages,
    parse_answer,
    parse_json_answer,
)
from clearglass.magic.llm_cache import LLMCache, request_key
from clearglass.magic.sources import SourceItem
from clearglass_testing.fake_llm_server import FakeLLMServer, Reply, answer_for, last_user_text, wants_json_schema

KEY = "sk-planted-7f3a9c1e"  # a key that must never be shown or stored

VALID = """<output>
<level1>birthday party</level1>
<level2>Celebration</level2>
<level3>Tradition</level3>
<level4>Culture</level4>
<caption>Friends gather to mark a special day.</caption>
<caption>A child is cheered on by guests.</caption>
<hard_negative>Wedding</hard_negative>
<hard_negative>Picnic</hard_negative>
</output>"""


def items(n: int, word: str = "pizza") -> list[SourceItem]:
    """n source items whose captions are distinct and mention `word`."""
    return [
        SourceItem(image=f"{i:012d}", path=Path(f"/nonexistent/{i:012d}.jpg"),
                   captions=[f"A {word} number {i}.", f"Photo {i}."])
        for i in range(n)
    ]


OPEN: list[LLMLabeler] = []


def labeler(server: FakeLLMServer, **settings: object) -> LLMLabeler:
    """A labeler for the fake server asking for <output> tags, with no progress bar; closed after the test."""
    defaults = dict(base_url=server.base_url, model="fake-model", structured="off", progress=False)
    OPEN.append(LLMLabeler(**(defaults | settings)))
    return OPEN[-1]


@pytest.fixture(autouse=True)
def close_labelers() -> None:
    yield
    while OPEN:
        OPEN.pop().close()


@pytest.fixture(autouse=True)
def no_llm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CLEARGLASS_LLM_", "OPENAI_")):
            monkeypatch.delenv(name)


# ---- parsing -------------------------------------------------------------------------------------------------


def test_parse_valid_answer_canonicalises_concepts() -> None:
    label = parse_answer("<think>Maybe <output>Cake</output>?</think>Sure!\n" + VALID)
    assert label.levels == ("Birthday Party", "Celebration", "Tradition", "Culture")
    assert label.new_captions == ["Friends gather to mark a special day.", "A child is cheered on by guests."]
    assert label.hard_negatives == ["Wedding", "Picnic"]


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("no tags at all", "exactly one <output>"),
        (VALID + VALID, "exactly one <output>"),
        (VALID.replace("<level3>Tradition</level3>", ""), "<level3>"),
        (VALID.replace("<level2>Celebration</level2>", "<level2>Celebration</level2><level2>Joy</level2>"), "<level2>"),
        (VALID.replace("Tradition", "  "), "level3"),
        (VALID.replace("Tradition", "Celebration"), "repeat"),
        (VALID.replace("Culture", "a very long sentence that is clearly not a concept name"), "level4"),
        (VALID.replace("Friends gather", "A birthday gathering"), "names level words ['birthday']"),
        (VALID.replace("A child is cheered", "Old traditions are cheered"), "traditions"),
        (VALID.replace("<caption>", "<x>").replace("</caption>", "</x>"), "unexpected text"),
        (VALID.replace("<hard_negative>Wedding</hard_negative>", "stray words"), "unexpected text"),
        (VALID.replace("<hard_negative>Wedding</hard_negative>\n<hard_negative>Picnic</hard_negative>", ""),
         "hard_negative"),
        (VALID.replace("Wedding", "Birthday Party"), "repeats level1"),
    ],
)
def test_parse_rejects_malformed_answers(text: str, complaint: str) -> None:
    with pytest.raises(MalformedAnswer, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        parse_answer(text)


def test_few_shot_examples_obey_the_parser() -> None:
    config = LLMConfig(base_url="http://127.0.0.1:1/v1", model="m")
    messages = build_messages(["A cat sleeps."], config)
    assert messages[0]["role"] == "system"
    assistant_turns = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(assistant_turns) == len(EXAMPLES)
    for turn, (_, levels, captions, negatives) in zip(assistant_turns, EXAMPLES):
        label = parse_answer(turn)
        assert label.levels == levels and label.new_captions == list(captions)
        assert label.hard_negatives == list(negatives)
    assert messages[-1] == {"role": "user",
                            "content": "Captions:\n- A cat sleeps.\nWrite 1 new captions and 3 hard negatives."}


def test_config_reads_environment_and_rejects_missing_endpoint() -> None:
    env = {"CLEARGLASS_LLM_BASE_URL": "http://localhost:8000/v1/", "CLEARGLASS_LLM_MODEL": "m",
           "OPENAI_API_KEY": "sk-env"}
    config = LLMConfig.from_env(env, concurrency=4, timeout_s=None)
    assert ((config.base_url, config.model, config.api_key, config.concurrency)
            == ("http://localhost:8000/v1", "m", "sk-env", 4))
    assert config.timeout_s == 60.0
    assert "sk-env" not in repr(config)
    assert LLMConfig.from_env({**env, "CLEARGLASS_LLM_API_KEY": "sk-own"}).api_key == "sk-own"
    with pytest.raises(ClearglassError, match="CLEARGLASS_LLM_BASE_URL"):
        LLMConfig.from_env({"CLEARGLASS_LLM_MODEL": "m"})
    with pytest.raises(ClearglassError, match="CLEARGLASS_LLM_MODEL"):
        LLMConfig.from_env({"CLEARGLASS_LLM_BASE_URL": "http://x/v1"})
    with pytest.raises(ClearglassError, match="base URL"):
        LLMConfig.from_env({}, base_url="localhost:8000", model="m")
    with pytest.raises(ClearglassError, match="concurrency"):
        LLMConfig.from_env({}, base_url="http://x/v1", model="m", concurrency=0)
    with pytest.raises(ClearglassError, match="unknown llm labeler settings"):
        LLMConfig.from_env({}, base_url="http://x/v1", model="m", concurency=2)


def test_config_reads_every_field_from_its_environment_variable() -> None:
    env = {
        "CLEARGLASS_LLM_BASE_URL": "http://h/v1",
        "CLEARGLASS_LLM_MODEL": "m",
        "CLEARGLASS_LLM_TIMEOUT_S": "2.5",
        "CLEARGLASS_LLM_MAX_RETRIES": "0",
        "CLEARGLASS_LLM_PROGRESS": "false",
        "CLEARGLASS_LLM_CACHE_PATH": "/tmp/c.sqlite",
    }
    config = LLMConfig.from_env(env, max_retries=5)
    assert (config.timeout_s, config.max_retries, config.progress) == (2.5, 5, False)
    assert config.cache_path == Path("/tmp/c.sqlite")
    with pytest.raises(ClearglassError, match="CLEARGLASS_LLM_TIMEOUT_S='soon': expected a float"):
        LLMConfig.from_env({**env, "CLEARGLASS_LLM_TIMEOUT_S": "soon"})
    with pytest.raises(ClearglassError, match="CLEARGLASS_LLM_PROGRESS"):
        LLMConfig.from_env({**env, "CLEARGLASS_LLM_PROGRESS": "maybe"})


# ---- against the local server ----------------------------------------------------------------------------------


def test_success_parse_and_factory_and_api_key_header() -> None:
    with FakeLLMServer(api_key="sk-test") as server:
        lab = make_labeler("llm", base_url=server.base_url, model="fake-model", api_key="sk-test", progress=False)
        assert isinstance(lab, Labeler) and lab.name == "llm"
        [label] = lab.label_many(items(1, "pizza"))
        lab.close()
    assert isinstance(label, ConceptLabel)
    assert label.levels == ("Meal Preparation", "Cooking", "Domestic Task", "Daily Life")
    assert label.new_captions == ["Someone gets a dish ready to share at home."]
    assert label.hard_negatives == ["Restaurant Service", "Grocery Shopping"]
    assert server.auth_headers == ["Bearer sk-test"]
    body = server.bodies[0]
    assert body["model"] == "fake-model" and body["temperature"] == 0.7
    assert "A pizza number 0." in last_user_text(body)


def test_no_key_sends_no_authorization_header() -> None:
    with FakeLLMServer() as server:
        [label] = labeler(server).label_many(items(1))
    assert isinstance(label, ConceptLabel) and server.auth_headers == [None]


def test_wrong_key_is_a_configuration_error_not_a_failure_per_image() -> None:
    with FakeLLMServer(api_key="sk-right") as server:
        with pytest.raises(ClearglassError, match="HTTP 401"):
            labeler(server, api_key="sk-wrong", concurrency=2).label_many(items(6))
        assert server.requests < 6


def test_wrong_path_is_a_configuration_error() -> None:
    with FakeLLMServer() as server:
        with pytest.raises(ClearglassError, match="HTTP 404"):
            labeler(server, base_url=server.base_url + "/extra").label_many(items(1))


def test_retry_after_500() -> None:
    with FakeLLMServer(lambda body, i: Reply(status=500) if i < 2 else Reply()) as server:
        lab = labeler(server)
        [label] = lab.label_many(items(1))
    assert isinstance(label, ConceptLabel)
    assert server.requests == 3 and lab.stats["retries"] == 2 and lab.stats["failures"] == 0


def test_retry_after_timeout() -> None:
    with FakeLLMServer(lambda body, i: Reply(delay_s=1.0) if i == 0 else Reply()) as server:
        lab = labeler(server, timeout_s=0.2)
        [label] = lab.label_many(items(1))
    assert isinstance(label, ConceptLabel)
    assert server.requests == 2 and lab.stats["retries"] == 1


def test_retry_after_connection_refused_then_failure() -> None:
    with FakeLLMServer() as server:
        url = server.base_url
    lab = LLMLabeler(base_url=url, model="m", max_retries=1, progress=False)
    [failure] = lab.label_many(items(1))
    lab.close()
    assert isinstance(failure, LabelFailure) and failure.image == "000000000000"
    port = url.split(":")[-1].split("/")[0]
    assert failure.reason == f"connection refused to 127.0.0.1:{port} after 2 attempts"
    assert lab.stats == {"requests": 2, "cache_hits": 0, "retries": 1, "failures": 1, "structured": "auto"}


def test_garbage_is_retried_then_counted_as_failure() -> None:
    def script(body: dict, i: int) -> Reply:
        if "image0 " in last_user_text(body):
            return Reply(raw_body=b"\x00 this is not json")
        if "image1 " in last_user_text(body):
            return Reply(content="I think this picture is about food.")
        return Reply()

    batch = [SourceItem(f"im{i}", Path("/x"), [f"image{i} shows a pizza"]) for i in range(3)]
    with FakeLLMServer(script) as server:
        lab = labeler(server, max_retries=2)
        results = lab.label_many(batch)
    assert [type(r) for r in results] == [LabelFailure, LabelFailure, ConceptLabel]
    assert results[0].image == "im0" and "not a chat-completions response" in results[0].reason
    assert results[1].image == "im1" and "exactly one <output>" in results[1].reason
    assert server.requests == 3 + 3 + 1 and lab.stats["failures"] == 2


def test_client_error_is_not_retried() -> None:
    with FakeLLMServer(lambda body, i: Reply(status=400)) as server:
        [failure] = labeler(server).label_many(items(1))
    assert isinstance(failure, LabelFailure) and "HTTP 400" in failure.reason and server.requests == 1


def test_image_without_captions_is_a_failure_without_a_request() -> None:
    with FakeLLMServer() as server:
        [failure] = labeler(server).label_many([SourceItem("x", Path("/x"), [])])
    assert isinstance(failure, LabelFailure) and "no captions" in failure.reason and server.requests == 0


def test_cache_hit_avoids_second_request(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    with FakeLLMServer() as server:
        first = labeler(server, cache_path=cache).label_many(items(3))
        assert server.requests == 3
        again = labeler(server, cache_path=cache)
        second = again.label_many(items(3))
        assert server.requests == 3
        assert first == second and again.stats["cache_hits"] == 3
        labeler(server, cache_path=cache, model="other-model").label_many(items(1))
        assert server.requests == 4  # the model is part of the key


def test_failures_are_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    with FakeLLMServer(lambda body, i: Reply(content="garbage")) as server:
        [failure] = labeler(server, cache_path=cache, max_retries=0).label_many(items(1))
    assert isinstance(failure, LabelFailure) and len(LLMCache(cache)) == 0


def test_resume_after_interruption(tmp_path: Path) -> None:
    """A build killed mid-way: answers that arrived are kept; the rerun only asks for the rest."""
    cache = tmp_path / "cache.sqlite"
    release = threading.Event()

    def hang_after_four(body: dict, i: int) -> Reply:
        if i >= 4:
            release.wait(5.0)
            return Reply(status=503)
        return Reply()

    batch = items(10)
    with FakeLLMServer(hang_after_four) as server:
        first = labeler(server, cache_path=cache, concurrency=1, max_retries=0)
        worker = threading.Thread(target=lambda: first.label_many(batch), daemon=True)
        worker.start()
        while server.requests < 5:
            threading.Event().wait(0.01)
        assert len(LLMCache(cache)) == 4  # committed before the build ends
        release.set()
        worker.join(10.0)
    with FakeLLMServer() as server:
        resumed = labeler(server, cache_path=cache, concurrency=4)
        results = resumed.label_many(batch)
    assert all(isinstance(r, ConceptLabel) for r in results)
    assert server.requests == 6 and resumed.stats["cache_hits"] == 4


def test_requests_run_in_parallel() -> None:
    with FakeLLMServer(latency_s=0.2) as server:
        results = labeler(server, concurrency=8).label_many(items(8))
    assert all(isinstance(r, ConceptLabel) for r in results)
    assert server.max_in_flight > 1


def test_results_stay_in_input_order_under_concurrency() -> None:
    words = ["pizza", "baseball", "giraffe", "street"] * 4
    batch = [SourceItem(str(i), Path("/x"), [f"a {w} scene {i}"]) for i, w in enumerate(words)]
    with FakeLLMServer(lambda body, i: Reply(delay_s=0.05 * (i % 3))) as server:
        results = labeler(server, concurrency=6).label_many(batch)
    expected = [parse_answer(answer_for(f"a {w}")).levels for w in words]
    assert [r.levels for r in results] == expected


def test_cache_key_and_store(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    key = request_key("m", messages, 0.7)
    assert key == request_key("m", [dict(messages[0])], 0.7)
    assert len({key, request_key("n", messages, 0.7), request_key("m", messages, 0.0)}) == 3
    cache = LLMCache(tmp_path / "c.sqlite")
    assert cache.get(key) is None
    cache.put(key, "answer")
    assert cache.get(key) == "answer" and len(cache) == 1
    cache.close()
    rows = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT key, answer FROM answers").fetchall()
    assert rows == [(key, "answer")]
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database" * 100)
    with pytest.raises(ClearglassError, match="bad.sqlite"):
        LLMCache(bad)


# ---- structured output -------------------------------------------------------------------------------------------

VALID_JSON = {"level1": "birthday party", "level2": "Celebration", "level3": "Tradition", "level4": "Culture",
              "captions": ["Friends gather to mark a special day."], "hard_negatives": ["Wedding", "Picnic"]}


def test_parse_json_answer_checks_schema_and_rules() -> None:
    label = parse_json_answer("<think>{not json}</think>\n" + json.dumps(VALID_JSON))
    assert label.levels == ("Birthday Party", "Celebration", "Tradition", "Culture")
    assert label.new_captions == ["Friends gather to mark a special day."]
    assert label.hard_negatives == ["Wedding", "Picnic"]
    assert parse_json_answer(build_messages(["x"], LLMConfig(base_url="http://h/v1", model="m"), True)[2]["content"])


@pytest.mark.parametrize("change, complaint", [
    ("plain words", "not a JSON object"),
    ([1, 2], "answer: expected a JSON object, got list"),
    ({"level4": None}, r"answer.level4: expected a string, got NoneType"),
    ({"captions": []}, r"answer.captions: expected a list of at least 1 items"),
    ({"hard_negatives": "Wedding"}, r"answer.hard_negatives: expected a list"),
    ({"captions": ["fine", 3]}, r"answer.captions\[1\]: expected a string"),
    ({"extra": 1}, r"missing keys \[\], unexpected keys \['extra'\]"),
    ({"captions": ["A birthday gathering."]}, r"names level words \['birthday'\]"),
    ({"level3": "Celebration"}, "repeat"),
    ({"hard_negatives": ["Birthday Party"]}, "repeats level1"),
    ({"captions": ["   "]}, "non-empty captions"),
])
def test_parse_json_answer_rejects(change: object, complaint: str) -> None:
    if isinstance(change, dict):
        text = json.dumps(VALID_JSON | change)
    else:
        text = change if isinstance(change, str) else json.dumps(change)
    with pytest.raises(MalformedAnswer, match=complaint):
        parse_json_answer(text)


def test_parse_json_answer_names_missing_keys() -> None:
    missing = {k: v for k, v in VALID_JSON.items() if k != "level2"}
    with pytest.raises(MalformedAnswer, match=r"missing keys \['level2'\]"):
        parse_json_answer(json.dumps(missing))


def test_json_schema_sends_response_format_and_parses_json() -> None:
    with FakeLLMServer() as server:
        lab = labeler(server, structured="json_schema")
        [label] = lab.label_many(items(1))
    body = server.bodies[0]
    assert body["response_format"] == RESPONSE_FORMAT
    assert body["response_format"]["json_schema"]["schema"]["required"] == [
        "level1", "level2", "level3", "level4", "captions", "hard_negatives"]
    assert body["messages"][0]["content"] == JSON_SYSTEM_PROMPT
    assert json.loads(body["messages"][2]["content"])["level1"] == "Birthday Party"  # few-shot turns in JSON
    assert label.levels == ("Meal Preparation", "Cooking", "Domestic Task", "Daily Life")
    assert lab.stats["structured"] == "json_schema"


def test_auto_keeps_json_schema_when_the_server_accepts_it() -> None:
    with FakeLLMServer() as server, warnings.catch_warnings():
        warnings.simplefilter("error")
        lab = labeler(server, structured="auto", concurrency=4)
        results = lab.label_many(items(6))
    assert all(isinstance(r, ConceptLabel) for r in results)
    assert server.requests == 6 and all(wants_json_schema(b) for b in server.bodies)
    assert lab.stats["structured"] == "json_schema" and "structured_fallback" not in lab.stats


def test_auto_falls_back_to_tags_once_when_the_server_refuses() -> None:
    with FakeLLMServer(structured=False) as server:
        lab = labeler(server, structured="auto", concurrency=4)
        with pytest.warns(UserWarning, match="refused response_format json_schema") as record:
            results = lab.label_many(items(6))
    assert [str(w.message) for w in record if "refused" in str(w.message)] == [str(record[0].message)]
    assert all(isinstance(r, ConceptLabel) for r in results)
    assert server.requests == 7 and [wants_json_schema(b) for b in server.bodies].count(True) == 1
    assert lab.stats["structured"] == "off" and "HTTP 400" in lab.stats["structured_fallback"]
    assert "not supported" in lab.stats["structured_fallback"]


def test_json_schema_mode_does_not_fall_back() -> None:
    with FakeLLMServer(structured=False) as server:
        results = labeler(server, structured="json_schema").label_many(items(2))
    assert all(isinstance(r, LabelFailure) and "refused the request: HTTP 400" in r.reason for r in results)
    assert server.requests == 2


def test_malformed_json_answer_is_asked_again() -> None:
    with FakeLLMServer(lambda body, i: Reply(content='{"level1": "Food"}') if i == 0 else Reply()) as server:
        lab = labeler(server, structured="json_schema")
        [label] = lab.label_many(items(1))
    assert isinstance(label, ConceptLabel) and server.requests == 2 and lab.stats["retries"] == 1


def test_auto_mode_reads_cached_tag_answers(tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    with FakeLLMServer() as server:
        first = labeler(server, cache_path=cache).label_many(items(3))
        again = labeler(server, cache_path=cache, structured="auto")
        assert again.label_many(items(3)) == first
    assert server.requests == 3 and again.stats["cache_hits"] == 3


# ---- faults on the openai client -------------------------------------------------------------------------------


def test_429_waits_for_retry_after() -> None:
    arrivals: list[float] = []

    def script(body: dict, i: int) -> Reply:
        arrivals.append(time.monotonic())
        return Reply(status=429, headers={"Retry-After": "0.6"}) if i == 0 else Reply()

    with FakeLLMServer(script) as server:
        lab = labeler(server)
        [label] = lab.label_many(items(1))
    assert isinstance(label, ConceptLabel) and server.requests == 2 and lab.stats["retries"] == 1
    assert arrivals[1] - arrivals[0] >= 0.6


@pytest.mark.parametrize("reply, reason", [
    (Reply(status=503), "HTTP 503 after 2 attempts"),
    (Reply(delay_s=1.0), "timed out (timeout 0.2 s) after 2 attempts"),
    (Reply(raw_body=b"<html>busy</html>"), "malformed answer after 2 attempts: not a chat-completions response"),
])
def test_failure_reasons_name_the_cause_and_attempts(reply: Reply, reason: str) -> None:
    with FakeLLMServer(lambda body, i: reply) as server:
        lab = labeler(server, max_retries=1, timeout_s=0.2)
        [failure] = lab.label_many(items(1))
    assert isinstance(failure, LabelFailure) and failure.reason.startswith(reason)
    assert server.requests == 2 and lab.stats["failures"] == 1


def test_timeout_is_a_deadline_for_the_whole_answer_not_per_read() -> None:
    """A server that trickles a byte every 0.05 s never lets one read wait 0.5 s, but the answer is due by then."""
    with FakeLLMServer(lambda body, i: Reply(trickle_s=0.05)) as server:
        lab = labeler(server, max_retries=0, timeout_s=0.5)
        start = time.monotonic()
        [failure] = lab.label_many(items(1))
    assert isinstance(failure, LabelFailure) and failure.reason.startswith("timed out")
    assert time.monotonic() - start < 2.0


def test_an_oversized_answer_is_refused_and_never_cached(tmp_path: Path) -> None:
    from clearglass.magic.labelers.llm import MAX_ANSWER_BYTES

    with FakeLLMServer(lambda body, i: Reply(content="x" * (MAX_ANSWER_BYTES + 1))) as server:
        lab = labeler(server, max_retries=0, cache_path=tmp_path / "c.sqlite")
        [failure] = lab.label_many(items(1))
    assert isinstance(failure, LabelFailure) and "over 262,144 bytes" in failure.reason
    assert len(lab.cache) == 0


# ---- keys stay home ----------------------------------------------------------------------------------------------


def test_config_honours_openai_base_url() -> None:
    env = {"OPENAI_BASE_URL": "http://openai-env/v1", "CLEARGLASS_LLM_MODEL": "m"}
    assert LLMConfig.from_env(env).base_url == "http://openai-env/v1"
    assert LLMConfig.from_env({**env, "CLEARGLASS_LLM_BASE_URL": "http://own/v1"}).base_url == "http://own/v1"


@pytest.mark.parametrize("same_origin", [False, True])
def test_redirects_are_not_followed_so_no_key_goes_elsewhere(same_origin: bool) -> None:
    with FakeLLMServer() as elsewhere:
        def script(body: dict, i: int) -> Reply:
            target = (server.base_url + "/other" if same_origin else elsewhere.base_url) + "/chat/completions"
            return Reply(status=307, headers={"Location": target})

        refused = "HTTP 307 redirect to http://127.0.0.1.*follows no redirects"
        with FakeLLMServer(script) as server, pytest.raises(ClearglassError, match=refused) as error:
            labeler(server, api_key=KEY).label_many(items(1))
    assert server.auth_headers == [f"Bearer {KEY}"]  # the configured endpoint, once
    assert elsewhere.auth_headers == [] and KEY not in str(error.value)


def test_401_echoing_the_key_is_scrubbed() -> None:
    with FakeLLMServer(lambda body, i: Reply(status=401, error_message=f"invalid key {KEY}")) as server, \
            pytest.raises(ClearglassError, match=r"HTTP 401 \(check the API key\)") as error:
        labeler(server, api_key=KEY).label_many(items(1))
    assert KEY not in str(error.value) and "invalid key [API key]" in str(error.value)


@pytest.mark.parametrize("echo", [lambda k: "x" * 167 + k, lambda k: k.lower(),
                                  lambda k: k.upper()])
def test_an_echoed_key_leaves_no_fragment_however_it_is_cut_or_cased(echo: object) -> None:
    with FakeLLMServer(lambda body, i: Reply(status=401, error_message=echo(KEY))) as server, \
            pytest.raises(ClearglassError, match=r"HTTP 401") as error:
        labeler(server, api_key=KEY).label_many(items(1))
    message = str(error.value)
    assert not any(KEY[:i].lower() in message.lower() for i in range(6, len(KEY) + 1)), message


def test_a_password_in_the_base_url_is_never_printed() -> None:
    with FakeLLMServer(lambda body, i: Reply(status=401, error_message="no")) as server:
        url = server.base_url.replace("http://", "http://user:hunter2secret@")
        with pytest.raises(ClearglassError, match=r"HTTP 401") as error:
            labeler(server, base_url=url).label_many(items(1))
    assert "hunter2secret" not in str(error.value) and "[credentials]@" in str(error.value)


def test_failure_reasons_and_answers_never_carry_the_key(tmp_path: Path) -> None:
    def script(body: dict, i: int) -> Reply:
        text = last_user_text(body)
        if "number 0." in text:
            return Reply(status=400, error_message=f"bad request for {KEY}")
        if "number 1." in text:
            return Reply(content=answer_for("pizza").replace("Someone gets", f"{KEY} gets"))
        return Reply(raw_body=f"oops {KEY}".encode())

    cache = tmp_path / "cache.sqlite"
    with FakeLLMServer(script) as server:
        lab = labeler(server, api_key=KEY, max_retries=0, cache_path=cache)
        results = lab.label_many(items(3))
        lab.close()
    reasons = [r.reason for r in results]
    assert all(isinstance(r, LabelFailure) for r in results) and not any(KEY in r for r in reasons)
    assert "[API key]" in reasons[0] and "repeats the API key" in reasons[1] and "[API key]" in reasons[2]
    assert len(LLMCache(cache)) == 0 and KEY.encode() not in cache.read_bytes()


def test_auto_does_not_fall_back_for_a_request_refused_either_way() -> None:
    """A 400 about the request itself (refused with tags too) is that image's failure, not the schema's."""
    def script(body: dict, i: int) -> Reply:
        return Reply(status=400, error_message="prompt too long") if "number 0." in last_user_text(body) else Reply()

    with FakeLLMServer(script) as server, warnings.catch_warnings():
        warnings.simplefilter("error")
        lab = labeler(server, structured="auto", concurrency=1)
        results = lab.label_many(items(3))
    assert isinstance(results[0], LabelFailure) and "prompt too long" in results[0].reason
    assert all(isinstance(r, ConceptLabel) for r in results[1:])
    assert [wants_json_schema(b) for b in server.bodies] == [True, False, True, True]
    assert lab.stats["structured"] == "json_schema"


def test_a_full_disk_under_the_cache_is_named_as_such_not_as_a_bad_file(tmp_path: Path) -> None:
    cache = LLMCache(tmp_path / "c.sqlite")
    page_count = cache._db.execute("PRAGMA page_count").fetchone()[0]
    cache._db.execute(f"PRAGMA max_page_count = {page_count}")  # SQLite's own "database or disk is full"
    with pytest.raises(ClearglassError, match=r"c.sqlite: cannot store an LLM answer in the cache \(database or disk "
                                              r"is full\)"):
        cache.put("k", "x" * 100_000)
    cache.close()
