"""End to end: `clearglass build --labeler llm` through a local chat server: a tiny COCO fixture with faults, a
planted API key that no output may carry (coco, csv and folder sources), and builds whose every image fails."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearglass.cli import main
from clearglass.errors import ClearglassError
from clearglass.magic.labelers.llm import LLMLabeler
from clearglass.magic.schema import load_concepts
from clearglass.magic.sources import SourceItem
from clearglass.magic.validate import validate
from clearglass_testing.fake_llm_server import FakeLLMServer, Reply, last_user_text

TOPICS = {
    "pizza": ["A {} pizza on a kitchen table.", "Someone slices a pizza.", "Food on a plate {}."],
    "baseball": ["A baseball player swings {}.", "Players on a field.", "A pitcher throws the ball {}."],
    "giraffe": ["A giraffe eats leaves {}.", "A tall giraffe near trees.", "Giraffe number {} in the wild."],
}
BROKEN = 2  # images whose captions make the server answer garbage


def write_coco(root: Path) -> dict[int, str]:
    """annotations/captions_val2017.json and 16x16 JPEGs under val2017/; returns {image id: topic or 'broken'}."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    topics = {}
    image_id = 1
    for topic in TOPICS:
        for _ in range(4):
            topics[image_id] = topic
            image_id += 1
    for _ in range(BROKEN):
        topics[image_id] = "broken"
        image_id += 1
    images, annotations = [], []
    for i, topic in topics.items():
        name = f"{i:012d}.jpg"
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / "val2017" / name, quality=90)
        images.append({"id": i, "file_name": name, "height": 16, "width": 16})
        texts = [t.format(i) for t in TOPICS[topic]] if topic != "broken" else [f"broken picture {i}", "static"]
        annotations += [{"id": 100 * i + k, "image_id": i, "caption": c} for k, c in enumerate(texts)]
    (root / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    return topics


def make_script() -> Callable[[dict, int], Reply]:
    """Garbage for the broken images, a 500 for the first request about image 1, a valid answer otherwise."""
    seen_first = []

    def script(body: dict, index: int) -> Reply:
        text = last_user_text(body)
        if "broken picture" in text:
            return Reply(content="<output><level1>Unfinished")
        if "A 1 pizza" in text and not seen_first:
            seen_first.append(index)
            return Reply(status=500)
        return Reply()

    return script


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("CLEARGLASS_LLM_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLEARGLASS_LLM_API_KEY", "sk-local")
    monkeypatch.setenv("CLEARGLASS_CACHE", str(tmp_path / "cg-cache"))


def test_build_coco_with_llm_labeler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topics = write_coco(tmp_path / "coco")
    out = tmp_path / "out" / "magic.json"
    cache = tmp_path / "out" / "llm.sqlite"
    with FakeLLMServer(make_script(), api_key="sk-local") as server:
        argv = ["build", "--source", "coco", "--labeler", "llm", "--coco-root", str(tmp_path / "coco"),
                "--out", str(out), "--llm-base-url", server.base_url, "--llm-model", "fake-model",
                "--llm-concurrency", "4", "--llm-cache", str(cache), "--min-group-size", "3",
                "--hard-negatives", "2", "--no-progress"]
        assert main(argv) == 0
        requests_first = server.requests
        assert main(argv) == 0  # a rerun asks only for what failed before
        requests_second = server.requests - requests_first
    capsys.readouterr()
    good = sum(t != "broken" for t in topics.values())
    assert requests_first == good + 1 + BROKEN * 4  # one 500 retried; each broken image asked 1 + 3 times
    assert requests_second == BROKEN * 4

    assert validate(out, tmp_path / "coco" / "val2017") == []
    concepts = {c.concept: c for c in load_concepts(out)}
    assert set(concepts) == {"Meal Preparation", "Team Sport", "Wildlife"}
    for concept in concepts.values():
        images = concept.train_images + concept.test_images
        assert len(images) == 4 and len(concept.test_images) == 1
        assert len(concept.hard_negative) == 2 and concept.concept not in concept.hard_negative
        assert all(len(im.old_captions) == 3 and im.new_captions for im in images)
    wildlife = concepts["Wildlife"].train_images[0]
    assert (wildlife.level2, wildlife.level3, wildlife.level4) == ("Nature", "Ecosystem", "Environment")
    assert {topics[int(im.image[:12])] for im in concepts["Wildlife"].train_images} == {"giraffe"}

    stats = json.loads((tmp_path / "out" / "magic.stats.json").read_text())
    failures = stats["build"]["label_failures"]
    assert failures["count"] == BROKEN
    broken_files = {f"{i:012d}.jpg" for i, t in topics.items() if t == "broken"}
    assert {f["image"] for f in failures["examples"]} == broken_files
    assert all("malformed answer" in f["reason"] for f in failures["examples"])
    assert stats["build"]["labeler_stats"]["cache_hits"] == good


KEY = "sk-planted-5e1d2b7c"  # must reach the endpoint and nothing else


def write_images(root: Path, captions: dict[str, list[str]], folders: dict[str, str]) -> dict[str, Path]:
    """One 16x16 JPEG per name under root/<its folder>/; returns {name: path}."""
    paths = {}
    for k, name in enumerate(captions):
        path = root / folders[name] / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), ((40 * k) % 256, 90, 160)).save(path)
        paths[name] = path
    return paths


def source_argv(kind: str, root: Path, captions: dict[str, list[str]]) -> list[str]:
    """Write the images and captions as a `kind` source (coco, csv or folder) and return its build arguments."""
    if kind == "coco":
        from magic_fixtures import write_coco

        write_coco(root, {i: texts for i, texts in enumerate(captions.values(), start=1)})
        return ["--source", "coco", "--coco-root", str(root)]
    if kind == "csv":
        write_images(root, captions, {name: "img" for name in captions})
        rows = [f"img/{name}.jpg,{c}" for name, texts in captions.items() for c in texts]
        (root / "list.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
        return ["--source", "csv", "--csv", str(root / "list.csv")]
    paths = write_images(root, captions, {name: name.split("-")[0] for name in captions})
    for name, path in paths.items():
        path.with_suffix(".txt").write_text("\n".join(captions[name]))
    return ["--source", "folder", "--images", str(root)]


def planted_key_script(body: dict, index: int) -> Reply:
    """Valid answers, except images 'bad-<k>': each fault echoes the key in its own way."""
    text = last_user_text(body)
    if "bad picture 0" in text:
        return Reply(status=400, error_message=f"rejected request from {KEY}")
    if "bad picture 1" in text:
        return Reply(status=500, error_message=f"upstream saw {KEY}")
    if "bad picture 2" in text:
        return Reply(raw_body=f"<html>{KEY}</html>".encode())
    if "bad picture 3" in text:
        return Reply(content=json.dumps({"level1": KEY}))
    return Reply()


@pytest.mark.parametrize("kind", ["coco", "csv", "folder"])
def test_planted_key_appears_in_no_output(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CG_PLANTED_KEY", KEY)
    monkeypatch.setenv("CLEARGLASS_LLM_MAX_RETRIES", "1")
    captions = {f"{topic}-{j}": [f"A {topic} photo {j}.", f"Another {topic} view {j}."]
                for topic in ("pizza", "baseball", "giraffe") for j in range(3)}
    captions |= {f"bad-{k}": [f"bad picture {k}"] for k in range(4)}
    argv = ["build", *source_argv(kind, tmp_path / "src", captions), "--labeler", "llm", "--llm-model", "m",
            "--llm-api-key-env", "CG_PLANTED_KEY", "--llm-cache", str(tmp_path / "out" / "llm.sqlite"),
            "--min-group-size", "3", "--out", str(tmp_path / "out" / "magic.json"), "--no-progress"]
    errors = []
    with FakeLLMServer(planted_key_script, api_key=KEY) as server:
        assert main([*argv, "--llm-base-url", server.base_url]) == 0
    with FakeLLMServer(lambda body, i: Reply(status=401, error_message=f"key {KEY} is revoked")) as revoked:
        assert main([*argv, "--llm-base-url", revoked.base_url, "--llm-cache", str(tmp_path / "out" / "2.sqlite")]) == 2
        labeler = LLMLabeler(base_url=revoked.base_url, model="m", api_key=KEY, progress=False)
        with pytest.raises(ClearglassError) as error:  # the exception text itself, as a library caller sees it
            labeler.label_many([SourceItem("x.jpg", Path("/x.jpg"), ["a pizza"])])
        labeler.close()
        errors.append(str(error.value))
    assert set(server.auth_headers) == {f"Bearer {KEY}"} and revoked.auth_headers[0] == f"Bearer {KEY}"

    stats = json.loads((tmp_path / "out" / "magic.stats.json").read_text())
    reasons = [f["reason"] for f in stats["build"]["label_failures"]["examples"]]
    assert len(reasons) == 4 and sum("[API key]" in r for r in reasons) == 2  # echoed by 400 and garbage: scrubbed
    printed = capsys.readouterr()
    assert "key [API key] is revoked" in printed.err
    outputs = {"stdout": printed.out, "stderr": printed.err, "logs": caplog.text, "exceptions": "\n".join(errors)}
    for path in (tmp_path / "out").iterdir():
        outputs[path.name] = path.read_bytes().decode("latin-1")
    rows = sqlite3.connect(tmp_path / "out" / "llm.sqlite").execute("SELECT key, answer FROM answers").fetchall()
    assert len(rows) == 9
    outputs["cache rows"] = repr(rows)
    assert "Sending HTTP Request" in caplog.text  # the client's debug log was captured
    assert [name for name, text in outputs.items() if KEY in text] == []


def failing_server(kind: str) -> FakeLLMServer:
    replies = {"http500": Reply(status=500), "garbage": Reply(raw_body=b"<html>busy</html>"),
               "malformed": Reply(content="I think it is food."), "hang": Reply(delay_s=1.5)}
    return FakeLLMServer(lambda body, i: replies.get(kind, Reply()))


@pytest.mark.parametrize("kind, reason", [
    ("refused", "connection refused to 127.0.0.1:{port} after 1 attempt (8)"),
    ("http500", "HTTP 500 after 1 attempt (8)"),
    ("garbage", "malformed answer after 1 attempt: not a chat-completions response: b'<html>busy</html>' (8)"),
    ("malformed", "malformed answer after 1 attempt: not a JSON object: 'I think it is food.' (8)"),
    ("hang", "timed out (timeout 0.3 s) after 1 attempt (8)"),
])
def test_total_label_failure_says_what_failed_and_writes_stats(kind: str, reason: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARGLASS_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("CLEARGLASS_LLM_TIMEOUT_S", "0.3")
    captions = {f"pizza-{j}": [f"A pizza photo {j}."] for j in range(8)}
    out = tmp_path / "out" / "magic.json"
    argv = ["build", *source_argv("csv", tmp_path / "src", captions), "--labeler", "llm", "--llm-model", "m",
            "--out", str(out), "--no-progress"]
    with failing_server(kind) as server:
        url = server.base_url
        if kind != "refused":
            assert main([*argv, "--llm-base-url", url]) == 2
    if kind == "refused":
        assert main([*argv, "--llm-base-url", url]) == 2
    port = url.split(":")[-1].split("/")[0]
    stats_file = tmp_path / "out" / "magic.stats.json"
    expected = f"8 of 8 images failed to label: {reason.format(port=port)} (build stats: {stats_file})"
    assert capsys.readouterr().err.strip() == f"clearglass build: error: {expected}"
    stats = json.loads(stats_file.read_text())
    assert stats["build"]["label_failures"]["count"] == 8 and stats["build"]["labeler_stats"]["requests"] == 8
    assert stats["error"] == expected.rsplit(" (build stats", 1)[0] and not out.exists()
