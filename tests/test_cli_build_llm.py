"""End to end: `clearglass build --source coco --labeler llm` on a tiny COCO fixture through a local chat server."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearglass.cli import main
from clearglass.magic.schema import load_concepts
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
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
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
        if name.startswith("CLEARGLASS_LLM_") or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLEARGLASS_LLM_BACKOFF_S", "0.01")
    monkeypatch.setenv("CLEARGLASS_LLM_BACKOFF_MAX_S", "0.02")
    monkeypatch.setenv("CLEARGLASS_LLM_API_KEY", "sk-local")


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
