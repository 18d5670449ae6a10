"""Bad input through the real entry point, as a hostile user would give it: every case ends in one line naming the
path and what was expected (exit 2), in a reported problem (`validate`, exit 1), or in correct handling (exit 0 and
the check the case names: a cleaned and counted text, an escaped title); none in a traceback, a silent acceptance,
an executed payload or a printed API key.

``python tests/test_cli_errors.py`` is the hostile rerun: it runs every case once and prints the counts per outcome.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # the helpers beside this file, also when run as a script

from clearglass.cli import main  # noqa: E402
from clearglass.magic.schema import LEVELS, ConceptRecord, ImageRecord, save_concepts, unsafe_chars  # noqa: E402
from clearglass.train import CONFIG_DIR, TrainConfig, train  # noqa: E402
from clearglass_testing.fake_llm_server import FakeLLMServer, Reply  # noqa: E402
from tiny_magic import TINY_MODEL_CONFIG, hold_run_lock, write_tiny_magic, write_tiny_model  # noqa: E402

SECRET = "sk-canary-7f3a9e"  # set as every API-key variable; it must never be printed or written
PAYLOAD = "PAYLOAD-RAN"  # the file a crafted checkpoint's payload would create


class Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted file does under ``torch.load(weights_only=False)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class World:
    """Shared inputs: tiny data and model, a finished 2-step run, a test set, bad files of every kind."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data" / "magic.json"

    @property
    def model(self) -> Path:
        return self.root / "data" / "tiny-model.pt"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def test_set(self) -> Path:
        return self.root / "test" / "test.json"

    @property
    def config(self) -> Path:
        return self.root / "train.json"


def make_world(root: Path) -> World:
    w = World(root)
    write_tiny_model(w.model)
    write_tiny_magic(w.data.parent, concepts=6, images_per_concept=3, held_out=0)
    config = tiny_config(w, w.run)
    w.config.write_text(json.dumps(config.to_dict()))
    train(config)
    (w.test_set.parent / "img").mkdir(parents=True)
    records = []
    for i in range(4):
        images = []
        for j in range(2):
            rel = f"img/c{i}_{j}.png"
            Image.fromarray(np.random.default_rng([i, j]).integers(0, 255, (16, 16, 3)).astype(np.uint8)) \
                .save(w.test_set.parent / rel)
            images.append(ImageRecord(rel, [f"a photo of thing {i} number {j}"], [f"idea {i}"], f"thing{i}",
                                      f"family{i // 2}"))
        records.append(ConceptRecord(f"thing{i}", [f"thing{(i + 1) % 4}"], [], images))
    save_concepts(records, w.test_set)
    (root / "folder").mkdir()
    (root / "latin1.json").write_bytes(b'[{"concept": "caf\xe9"}]')
    (root / "file").write_text("x")
    return w


def tiny_config(w: World, out: Path, **overrides) -> TrainConfig:
    items = {"data": str(w.data), "out": str(out), "model": str(w.model), "groups_per_batch": 4, "pairs_per_group": 2,
             "steps": 2, "warmup": 1, "log_every": 1, "checkpoint_every": 1, "device": "cpu", **overrides}
    return TrainConfig.load(CONFIG_DIR / "default-grouped.json", [f"{k}={json.dumps(v)}" for k, v in items.items()])


def copy_run(w: World, tmp: Path) -> tuple[Path, Path]:
    """A copy of the finished run and a config of its settings that resumes it: (run folder, config file)."""
    run = tmp / "run"
    shutil.copytree(w.run, run)
    config = tmp / "resume.json"
    config.write_text(json.dumps(tiny_config(w, run).to_dict()))
    return run, config


def variant(w: World, t: Path, change: Callable[[list], object]) -> Path:
    """The tiny dataset changed in place by ``change(raw)``, written beside the images under a name of its own: one
    per case folder ``t`` (a second call for the same ``t`` replaces the first)."""
    raw = json.loads(w.data.read_text())
    change(raw)
    path = w.data.parent / f"variant-{abs(hash(str(t)))}.json"
    path.write_text(json.dumps(raw))
    return path


def dataset_with(w: World, tmp: Path, image: str) -> Path:
    """The tiny dataset with its first train image id replaced by ``image`` (a :func:`variant`)."""
    return variant(w, tmp, lambda raw: raw[0]["train_images"][0].update(image=image))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------------------------
# the cases: each makes its inputs under tmp and returns (argv, what the message must name)

Check = Callable[[Path, str], bool]  # a "handled" case's check of (its folder, stdout)
Make = Callable[[World, Path, contextlib.ExitStack], tuple[list[str], "str | Check"]]
CASES: dict[str, tuple[str, Make]] = {}  # name -> (expected outcome: "error" | "problem" | "handled", make)
EXPECTED = {"error": "clear", "problem": "problem", "handled": "handled"}  # expectation -> the outcome it wants


def case(name: str, expect: str = "error") -> Callable[[Make], Make]:
    def register(make: Make) -> Make:
        CASES[name] = (expect, make)
        return make
    return register


for command in ("validate", "stats"):
    case(f"{command}: dataset is a folder")(lambda w, t, s, c=command: ([c, str(w.root / "folder")], "folder"))
    case(f"{command}: dataset is not UTF-8")(lambda w, t, s, c=command: ([c, str(w.root / "latin1.json")],
                                                                        "latin1.json"))
case("train: config is a folder")(lambda w, t, s: (["train", "--config", str(w.root / "folder")], "folder"))
case("train: config is not UTF-8")(lambda w, t, s: (["train", "--config", str(w.root / "latin1.json")], "latin1.json"))
case("train: data is a folder")(lambda w, t, s: (["train", "--config", str(w.config),
                                                  f"data={json.dumps(str(w.root / 'folder'))}"], "folder"))
case("eval: data is not UTF-8")(lambda w, t, s: (["eval", "--model", str(w.model), "--data",
                                                  str(w.root / "latin1.json"), "--out", str(t / "r.json")],
                                                 "latin1.json"))
for bad in ("folder", "latin1.json"):
    case(f"concepts: labels file is {bad}")(lambda w, t, s, b=bad: (
        ["concepts", str(w.data.parent / "images/concept0_0.png"), "--model", str(w.model), "--labels",
         str(w.root / b)], b))
case("train: unknown config key")(lambda w, t, s: (["train", "--config", str(w.config), "loss.alpah=1"], "loss.alpah"))
case("train: a typo in a key")(lambda w, t, s: (["train", "--config", str(w.config), "stpes=10"],
                                                "unknown key 'stpes'; did you mean 'steps'?"))
case("train: warmup >= steps")(lambda w, t, s: (["train", "--config", str(w.config), "--steps", "3", "--warmup", "3"],
                                                "warmup = 3 >= steps = 3"))
case("train: a batch larger than the data")(lambda w, t, s: (
    ["train", "--config", str(w.config), "--batch-size", "9x2"], "--batch-size 9x2: the dataset has 6 train groups"))
case("compare: --pairs naming no model")(lambda w, t, s: (
    ["compare", "--models", f"a={w.model}", f"b={w.model}", "--pairs", "a-c", "--data", str(w.test_set), "--out",
     str(t / "cmp")], "--pairs a-c: names no two different models"))
case("compare: --baseline naming no model")(lambda w, t, s: (
    ["compare", "--models", f"a={w.model}", "--baseline", "c", "--data", str(w.test_set), "--out", str(t / "cmp")],
    "--baseline c: not a name of --models"))
case("compare: two models of one name")(lambda w, t, s: (
    ["compare", "--models", f"a={w.model}", f"a={w.data}", "--data", str(w.test_set), "--out", str(t / "cmp")],
    "--models names 'a' twice"))
case("train: lr=-1")(lambda w, t, s: (["train", "--config", str(w.config), "lr=-1"], "train.json: lr = -1.0"))
case("train: lr=NaN")(lambda w, t, s: (["train", "--config", str(w.config), "lr=NaN"], "train.json: lr = nan"))
case("train: steps=1.5")(lambda w, t, s: (["train", "--config", str(w.config), "steps=1.5"], "steps = 1.5"))
case("train: out= an existing file")(lambda w, t, s: (["train", "--config", str(w.config),
                                                       f"out={json.dumps(str(w.root / 'file'))}"], "file"))
case("train: out= below a file")(lambda w, t, s: (["train", "--config", str(w.config),
                                                   f"out={json.dumps(str(w.root / 'file' / 'run'))}"], "file"))
case("demo: --out a regular file")(lambda w, t, s: (["demo", "--quick", "--out", str(w.root / "file")], "file"))
case("eval: --out a folder")(lambda w, t, s: (["eval", "--model", str(w.model), "--data", str(w.test_set),
                                               "--out", str(w.root / "folder")], "folder"))
case("eval: --out is its --data")(lambda w, t, s: (["eval", "--model", str(w.model), "--data", str(w.test_set),
                                                  "--out", str(w.test_set)], "is the --data file"))
case("build: --out is its --csv")(lambda w, t, s: (["build", "--source", "csv", "--csv", str(w.root / "file"),
                                                   "--labeler", "truth", "--csv-level-keys", "a",
                                                   "--out", str(w.root / "file")], "is the --csv file"))
case("interpolate: --out is its --fine-tuned")(lambda w, t, s: (
    ["interpolate", "--base", str(w.model), "--fine-tuned", str(w.model), "--w", "0.5", "--out", str(w.model)],
    "is the --fine-tuned checkpoint"))
case("eval: --out below a file")(lambda w, t, s: (["eval", "--model", str(w.model), "--data", str(w.test_set),
                                                   "--out", str(w.root / "file" / "r.json")], "file"))
case("compare: --out a regular file")(lambda w, t, s: (["compare", "--models", "clearglass:scratch", str(w.model),
                                                         "--data", str(w.test_set), "--out", str(w.root / "file")],
                                                        "file"))
case("eval: missing model checkpoint")(lambda w, t, s: (["eval", "--model", str(t / "nope.pt"), "--data",
                                                          str(w.test_set), "--out", str(t / "r.json")], "nope.pt"))


@case("resume: truncated .pt")
def _(w, t, s):
    run, config = copy_run(w, t)
    pt = run / "checkpoints" / "step_000002.pt"
    pt.write_bytes(pt.read_bytes()[:500])
    return ["train", "--config", str(config), "--resume", "auto"], str(pt)


@case("resume: truncated .extra.pt")
def _(w, t, s):
    run, config = copy_run(w, t)
    extra = run / "checkpoints" / "step_000002.extra.pt"
    extra.write_bytes(extra.read_bytes()[:500])
    return ["train", "--config", str(config), "--resume", "auto"], str(extra)


@case("resume: corrupt latest.json")
def _(w, t, s):
    run, config = copy_run(w, t)
    (run / "latest.json").write_text('{"checkpoint": ')
    return ["train", "--config", str(config), "--resume", "auto"], str(run / "latest.json")


@case("resume: latest.json points nowhere")
def _(w, t, s):
    run, config = copy_run(w, t)
    (run / "latest.json").write_text('{"checkpoint": "checkpoints/step_999999.pt"}')
    return ["train", "--config", str(config), "--resume", "auto"], "step_999999"


@case("resume: a checkpoint of another architecture")
def _(w, t, s):
    run, config = copy_run(w, t)
    raw = json.loads(config.read_text())
    wider = json.loads(json.dumps(TINY_MODEL_CONFIG))
    wider["vision_cfg"]["width"] = 48
    import open_clip

    from clearglass.checkpoints import save_checkpoint
    from clearglass.models import ModelBundle, ModelSource, register_open_clip_config

    name = register_open_clip_config("clearglass-test-tiny-wider", wider)
    model = open_clip.create_model(name)
    bundle = ModelBundle(model, None, None, None, name, ModelSource("open_clip", name, wider))
    other = save_checkpoint(bundle, t / "wider.pt", train_config={}, dataset_sha256="", metrics={})
    raw["model"] = str(other)
    config.write_text(json.dumps(raw))
    return ["train", "--config", str(config), "--resume", str(run / "checkpoints" / "step_000002.pt"),
            "--resume-allow-changes"], "step_000002.pt"


@case("resume: crafted .extra.pt")
def _(w, t, s):
    run, config = copy_run(w, t)
    torch.save({"step": 2, "x": Payload(t / PAYLOAD)}, run / "checkpoints" / "step_000002.extra.pt")
    return ["train", "--config", str(config), "--resume", "auto"], "step_000002.extra.pt"


@case("resume: crafted .pt")
def _(w, t, s):
    run, config = copy_run(w, t)
    torch.save({"x": Payload(t / PAYLOAD)}, run / "checkpoints" / "step_000002.pt")
    return ["train", "--config", str(config), "--resume", "auto"], "step_000002.pt"


@case("eval: crafted weights")
def _(w, t, s):
    run, _ = copy_run(w, t)
    torch.save({"x": Payload(t / PAYLOAD)}, run / "checkpoints" / "step_000002.pt")
    return ["eval", "--model", str(run / "checkpoints" / "step_000002.pt"), "--data", str(w.test_set), "--out",
            str(t / "r.json")], "step_000002.pt"


@case("eval: weights as a raw pickle")
def _(w, t, s):
    import pickle

    run, _ = copy_run(w, t)
    (run / "checkpoints" / "step_000002.pt").write_bytes(pickle.dumps(Payload(t / PAYLOAD), protocol=4))
    return ["eval", "--model", str(run / "checkpoints" / "step_000002.pt"), "--data", str(w.test_set), "--out",
            str(t / "r.json")], "step_000002.pt"


def concepts_on(w: World, image: Path) -> list[str]:
    return ["concepts", str(image), "--model", str(w.model), "--labels", str(labels_file(w))]


def labels_file(w: World) -> Path:
    path = w.root / "labels.txt"
    path.write_text("cat\ndog\n")
    return path


@case("concepts: image over PIL's bomb limit")
def _(w, t, s):
    (t / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    return concepts_on(w, t / "bomb.png"), "bomb.png"


@case("concepts: image over the pixel limit")
def _(w, t, s):
    (t / "large.png").write_bytes(png_header_only(10_000, 10_000))
    return concepts_on(w, t / "large.png"), "large.png"


for kind, write in {"0-byte": lambda p: p.write_bytes(b""), "text": lambda p: p.write_text("hello"),
                    "folder": lambda p: p.mkdir(), "missing": lambda p: None}.items():
    case(f"concepts: {kind} image")(lambda w, t, s, write=write, kind=kind: (
        write(t / f"{kind}.png"), concepts_on(w, t / f"{kind}.png"))[1:] + (f"{kind}.png",))


@case("stats: duplicate concepts")
def _(w, t, s):
    raw = json.loads(w.data.read_text())
    (t / "dup.json").write_text(json.dumps(raw + [raw[1]]))
    return ["stats", str(t / "dup.json")], "dup.json"


@case("validate: 0-byte image", "problem")
def _(w, t, s):
    (w.data.parent / "images" / "zero.png").write_bytes(b"")
    return ["validate", str(dataset_with(w, t, "images/zero.png"))], "zero.png: not a readable image"


@case("validate: empty dataset []", "problem")
def _(w, t, s):
    (t / "empty.json").write_text("[]")
    return ["validate", str(t / "empty.json")], "no concept records"


@case("validate: --images does not exist")
def _(w, t, s):
    return ["validate", str(w.data), "--images", str(t / "nowhere")], "nowhere"


for label, image in {"absolute path": "/etc/hostname", "../ path": "../../../../etc/hostname",
                     "suffix-less id": "6400004"}.items():
    case(f"validate: {label} image id", "problem")(lambda w, t, s, image=image: (
        ["validate", str(dataset_with(w, t, image))], repr(image)))
    case(f"train: {label} image id")(lambda w, t, s, image=image: (
        ["train", "--config", str(w.config), f"data={json.dumps(str(dataset_with(w, t, image)))}",
         f"out={json.dumps(str(t / 'out'))}"], repr(image)))


@case("validate: NUL in an image id", "problem")
def _(w, t, s):
    return ["validate", str(dataset_with(w, t, "images/a\x00.png"))], "image id"


@case("eval: image id outside the root")
def _(w, t, s):
    raw = json.loads(w.test_set.read_text())
    raw[0]["test_images"][0]["image"] = "../../data/images/concept0_0.png"
    (w.test_set.parent / "outside.json").write_text(json.dumps(raw))
    return ["eval", "--model", str(w.model), "--data", str(w.test_set.parent / "outside.json"), "--out",
            str(t / "r.json")], "../../data/images/concept0_0.png"


@case("build: --test-fraction 2")
def _(w, t, s):
    return ["build", "--source", "emoji", "--labeler", "truth", "--test-fraction", "2", "--out",
            str(t / "b.json"), "--no-progress"], "test_fraction = 2.0"


@case("build: --min-group-size larger than any group")
def _(w, t, s):
    s.enter_context(patched_env({"CLEARGLASS_CACHE": str(t / "cache")}))
    return ["build", "--source", "emoji", "--labeler", "truth", "--emoji-subgroups", "food-fruit,animal-bird",
            "--emoji-per-subgroup", "3", "--image-size", "32", "--min-group-size", "50", "--out", str(t / "b.json"),
            "--no-progress"], "fewer than min_group_size = 50"


@case("build: COCO file_name leaves the image folder")
def _(w, t, s):
    from magic_fixtures import write_coco

    path = write_coco(t / "coco", {1: ["a cat"]})
    raw = json.loads(path.read_text())
    raw["images"][0]["file_name"] = "../../../etc/hostname"
    path.write_text(json.dumps(raw))
    return ["build", "--source", "coco", "--labeler", "truth", "--coco-root", str(t / "coco"), "--out",
            str(t / "b.json"), "--no-progress"], "captions_val2017.json: image id 1"


@case("build: LLM endpoint rejects the key and echoes it")
def _(w, t, s):
    from magic_fixtures import write_coco

    write_coco(t / "coco", {i: [f"a cat number {i}"] for i in range(1, 4)})
    server = s.enter_context(FakeLLMServer(lambda body, i: Reply(status=401, raw_body=f"bad key Bearer {SECRET}"
                                                                 .encode())))
    return ["build", "--source", "coco", "--labeler", "llm", "--coco-root", str(t / "coco"), "--out",
            str(t / "b.json"), "--llm-base-url", server.base_url, "--llm-model", "m", "--no-progress"], "HTTP 401"


def bad_json(t: Path, name: str, raw: object) -> Path:
    (t / name).write_text(json.dumps(raw))
    return t / name


for label, raw, needle in [
        ("top level an object", {"concept": "a"}, "expected a JSON list"),
        ("record without concept", [{"train_images": []}], "concept record 0: field 'concept'"),
        ("image not an object", [{"concept": "a", "train_images": ["x.png"]}], "train_images[0]: expected an image"),
        ("captions not a list", [{"concept": "a", "train_images": [{"image": "x.png", "new_captions": "x"}]}],
         "field 'new_captions'"),
        ("level a number", [{"concept": "a", "test_images": [{"image": "x.png", "level1": 3}]}], "field 'level1'")]:
    for command in ("validate", "stats"):
        case(f"{command}: dataset {label}")(lambda w, t, s, c=command, r=raw, n=needle: (
            [c, str(bad_json(t, "d.json", r))], n))
    case(f"train: dataset {label}")(lambda w, t, s, r=raw, n=needle: (
        ["train", "--config", str(w.config), f"data={json.dumps(str(bad_json(t, 'd.json', r)))}"], n))
case("validate: duplicate image id", "problem")(lambda w, t, s: (
    ["validate", str(dataset_with(w, t, "images/concept0_1.png"))], "duplicate image id"))
for label, raw, needle in [("a list", [1], "expected a JSON object"), ("a null steps", {"steps": None}, "steps = None"),
                           ("an unknown section", {"los": {}}, "unknown key(s) ['los']")]:
    case(f"train: config is {label}")(lambda w, t, s, r=raw, n=needle: (
        ["train", "--config", str(bad_json(t, "c.json", r))], n))
case("train: eval_every without eval_data")(lambda w, t, s: (["train", "--config", str(w.config), "eval_every=1"],
                                                              "eval_every"))
case("train: amp on the CPU")(lambda w, t, s: (["train", "--config", str(w.config), "precision=amp",
                                                f"out={json.dumps(str(t / 'o'))}"], "precision 'amp'"))
case("train: --resume a folder")(lambda w, t, s: (["train", "--config", str(w.config), "--resume",
                                                    str(w.root / "folder")], "folder"))
case("train: --resume a missing file")(lambda w, t, s: (["train", "--config", str(w.config), "--resume",
                                                         str(t / "none.pt")], "none.pt"))
case("train: text_cache_file a folder")(lambda w, t, s: (
    ["train", "--config", str(w.config), "model=\"clearglass:scratch\"", "cache_text_features=true",
     f"text_cache_file={json.dumps(str(w.root / 'folder'))}", f"out={json.dumps(str(t / 'o'))}"], "folder"))
case("eval: --data missing")(lambda w, t, s: (["eval", "--model", str(w.model), "--data", str(t / "none.json"),
                                               "--out", str(t / "r.json")], "none.json"))
case("eval: --images missing")(lambda w, t, s: (["eval", "--model", str(w.model), "--data", str(w.test_set),
                                                 "--images", str(t / "nowhere"), "--out", str(t / "r.json")],
                                                "nowhere"))
for flags, needle in [(["--k", "1"], "k >= 2"), (["--n-boot", "0"], "n_boot >= 1"),
                      (["--template", "no braces"], "template"), (["--levels", "9"], "unknown level 9"),
                      (["--k", "9", "--fields", "old_caption"], "k=9 needs at least 9")]:
    case(f"eval: {' '.join(flags)}")(lambda w, t, s, f=flags, n=needle: (
        ["eval", "--model", str(w.model), "--data", str(w.test_set), "--out", str(t / "r.json"), *f], n))
case("eval: --cache-dir a file")(lambda w, t, s: (["eval", "--model", str(w.model), "--data", str(w.test_set), "--out",
                                                   str(t / "r.json"), "--cache-dir", str(w.root / "file")], "file"))


@case("eval: crafted embedding cache")
def _(w, t, s):
    cache = t / "cache"
    args = ["eval", "--model", str(w.model), "--data", str(w.test_set), "--out", str(t / "r.json"), "--cache-dir",
            str(cache), "--n-boot", "5"]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    for path in cache.glob("*.pt"):
        torch.save({"x": Payload(t / PAYLOAD)}, path)
    return args, "embedding cache file"


@case("build: crafted name-embedding cache")
def _(w, t, s):
    s.enter_context(patched_env({"CLEARGLASS_CACHE": str(t / "cache")}))
    (t / "cache").mkdir()
    torch.save({"x": Payload(t / PAYLOAD)}, t / "cache" / "minilm-names.pt")
    return ["build", "--source", "emoji", "--labeler", "truth", "--emoji-subgroups", "food-fruit,animal-bird",
            "--emoji-per-subgroup", "3", "--image-size", "32", "--min-group-size", "2", "--out", str(t / "b.json"),
            "--no-progress"], "minilm-names.pt"


case("concepts: --data and --labels")(lambda w, t, s: (
    ["concepts", str(w.data.parent / "images/concept0_0.png"), "--data", str(w.test_set), "--labels",
     str(labels_file(w))], "either --data"))
case("concepts: one label")(lambda w, t, s: (
    ["concepts", str(w.data.parent / "images/concept0_0.png"), "--labels", str(bad_text(t, "one.txt", "cat\n"))],
    "one.txt: expected at least 2 labels"))
case("concepts: one label given twice")(lambda w, t, s: (
    ["concepts", str(w.data.parent / "images/concept0_0.png"), "--labels", str(bad_text(t, "twice.txt", "cat\ncat\n"))],
    "twice.txt: expected at least 2 labels, one per line (a repeat counts once); found 1"))
case("compare: a model twice")(lambda w, t, s: (["compare", "--models", "clearglass:scratch", "clearglass:scratch",
                                                 "--data", str(w.test_set), "--out", str(t / "c")], "twice"))
case("build: emoji --image-size 8")(lambda w, t, s: (["build", "--source", "emoji", "--labeler", "truth",
                                                      "--image-size", "8", "--out", str(t / "b.json")], "image_size"))
case("build: --source coco without --coco-root")(lambda w, t, s: (
    ["build", "--source", "coco", "--labeler", "truth", "--out", str(t / "b.json")], "--coco-root"))
case("build: COCO captions not JSON")(lambda w, t, s: (
    ["build", "--source", "coco", "--labeler", "truth", "--coco-root", str(bad_coco(t)), "--out", str(t / "b.json")],
    "captions_val2017.json"))


def bad_text(t: Path, name: str, text: str) -> Path:
    (t / name).write_text(text)
    return t / name


def bad_coco(t: Path) -> Path:
    (t / "coco" / "annotations").mkdir(parents=True)
    (t / "coco" / "annotations" / "captions_val2017.json").write_text("{oops")
    return t / "coco"


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----------------------------------------------------------------------------------------------------------------
# round two (issue 25): control characters, markup, full disks, out-of-range options, crafted files, and input that
# used to be accepted silently


def train_on(w: World, t: Path, data: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(w.config), f"data={json.dumps(str(data))}", f"out={json.dumps(str(t / 'out'))}",
            *overrides]


def eval_on(w: World, t: Path, *flags: str) -> list[str]:
    return ["eval", "--model", str(w.model), "--data", str(w.test_set), "--out", str(t / "r.json"), *flags]


class _FullDisk:
    """A file whose every write fails as on a full disk (the OSError names no file)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[None]:
    """Every atomic write of clearglass.io into ``folder`` (or below it) meets a full disk."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    full: set[int] = set()

    def mkstemp(*args: object, dir: str | None = None, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, dir=dir, **kwargs)
        if Path(name).is_relative_to(folder):
            full.add(fd)
        return fd, name

    def fdopen(fd: int, *args: object, **kwargs: object) -> object:
        file = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(file) if fd in full else file

    with mock.patch("clearglass.io.tempfile.mkstemp", mkstemp), mock.patch("clearglass.io.os.fdopen", fdopen):
        yield


ESCAPES = "\x1b]0;pwned\x07Party\x1b[2J"  # a terminal title and a screen clear


def unsafe_in_dataset(path: Path) -> list[str]:
    """What :func:`unsafe_chars` names in the parsed strings of the dataset at ``path``: every concept name, hard
    negative and level, and every caption (as a caption). The JSON text writes control characters (ESC, BEL, NUL)
    as ``\\u`` escapes, so only the parsed strings show them."""
    found = []
    for record in json.loads(path.read_text()):
        names = [record["concept"], *record["hard_negative"]]
        for image in record["train_images"] + record["test_images"]:
            names += [image[key] for key in LEVELS if image[key] is not None]
            found += [c for text in image["old_captions"] + image["new_captions"]
                      for c in unsafe_chars(text, caption=True)]
        found += [c for name in names for c in unsafe_chars(name)]
    return found


@case("build: LLM answer with terminal escapes, a bidi override and a NUL is cleaned and counted", "handled")
def _(w, t, s):
    from magic_fixtures import write_coco

    write_coco(t / "coco", {i: [f"a street number {i}"] for i in range(1, 4)})
    answer = (f"<output>\n<level1>{ESCAPES}</level1>\n<level2>Cele\u202ebration</level2>\n<level3>Tra\x00dition"
              "</level3>\n<level4>Culture</level4>\n<caption>Friends gather \u200btogether.</caption>\n"
              "<hard_negative>Wedding</hard_negative>\n</output>")
    server = s.enter_context(FakeLLMServer(lambda body, i: Reply(content=answer)))
    return ["build", "--source", "coco", "--labeler", "llm", "--coco-root", str(t / "coco"), "--out", str(t / "b.json"),
            "--llm-base-url", server.base_url, "--llm-model", "m", "--llm-structured", "off", "--min-group-size", "1",
            "--no-progress"], lambda t, out: "cleaned: " in out and not unsafe_in_dataset(t / "b.json") \
        and "Celebration" in (t / "b.json").read_text()


@case("concepts: a label with a bidi override")
def _(w, t, s):
    return ["concepts", str(w.data.parent / "images/concept0_0.png"), "--model", str(w.model), "--labels",
            str(bad_text(t, "l.txt", "cat\ndo\u202eg\n"))], "l.txt:2: the label holds control, bidi or zero-width"


@case("concepts: --data whose level holds a terminal escape")
def _(w, t, s):
    return ["concepts", str(w.data.parent / "images/concept0_0.png"), "--model", str(w.model), "--data",
            str(variant(w, t, lambda raw: raw[0]["train_images"][0].update(level1=ESCAPES)))], "U+001B"


for label, change, needle in [
        ("a zero-width space in a concept name", lambda raw: raw[1].update(concept="concept\u200b9"), "U+200B"),
        ("a terminal escape in a caption", lambda raw: raw[0]["train_images"][0]["new_captions"].append(ESCAPES),
         "new_captions[2] holds control"),
        ("a whitespace-only concept name", lambda raw: raw[1].update(concept=" \t "), "field 'concept' must be a "
         "non-empty string"),
        ("a misspelt key train_image", lambda raw: raw[0].update(train_image=raw[0].pop("train_images")),
         "unknown key 'train_image'; did you mean 'train_images'?"),
        ("an unknown image key", lambda raw: raw[0]["train_images"][0].update(captions=["x"]),
         "unknown key 'captions'"),
        ("image id 1.5", lambda raw: raw[0]["train_images"][0].update(image=1.5), "field 'image' must be a string"),
        ("image id a list", lambda raw: raw[0]["train_images"][0].update(image=["a.png"]),
         "field 'image' must be a string")]:
    case(f"validate: {label}")(lambda w, t, s, c=change, n=needle: (["validate", str(variant(w, t, c))], n))
case("stats: NFC and NFD spellings of one concept name")(lambda w, t, s: (
    ["stats", str(variant(w, t, lambda raw: (raw[0].update(concept="caf\u00e9"),
                                             raw[1].update(concept="cafe\u0301"))))],
    "are both 'café'"))
case("validate: duplicate hard negatives", "problem")(lambda w, t, s: (
    ["validate", str(variant(w, t, lambda raw: raw[1]["hard_negative"].append(raw[1]["hard_negative"][0])))],
    "repeats hard_negative[0]"))
case("validate: images/./x.png beside images/x.png", "problem")(lambda w, t, s: (
    ["validate", str(dataset_with(w, t, "images/./concept0_1.png"))], "duplicate image id"))


@case("compare: a --title with HTML is escaped in report.md", "handled")
def _(w, t, s):
    title = "<img src=x onerror=alert(1)>"
    return ["compare", "--models", f"a={w.model}", "--data", str(w.test_set), "--out", str(t / "c"), "--n-boot", "5",
            "--title", title], lambda t, out: "&lt;img" in (t / "c" / "report.md").read_text() \
        and title not in (t / "c" / "report.md").read_text()


case("compare: a model name with <script>")(lambda w, t, s: (
    ["compare", "--models", f"{w.model}<script>", "--data", str(w.test_set), "--out", str(t / "c")],
    "would read as markup"))


@case("eval: a full disk under --out")
def _(w, t, s):
    s.enter_context(full_disk(t))
    return eval_on(w, t, "--n-boot", "5"), f"{t / 'r.json'}: cannot write (No space left on device)"


@case("train: a full disk under out=")  # a full disk at a checkpoint: tests/test_checkpoints.py
def _(w, t, s):
    s.enter_context(full_disk(t))
    return train_on(w, t, w.data), "out/config.json: cannot write (No space left on device)"


@case("build: a full disk under --out")
def _(w, t, s):
    s.enter_context(patched_env({"CLEARGLASS_CACHE": str(t / "cache")}))
    s.enter_context(full_disk(t))
    return ["build", "--source", "emoji", "--labeler", "truth", "--emoji-subgroups", "food-fruit,animal-bird",
            "--emoji-per-subgroup", "3", "--image-size", "32", "--min-group-size", "2", "--out", str(t / "b.json"),
            "--no-progress"], "cannot write (No space left on device)"


case("build: emoji --image-size 40000")(lambda w, t, s: (
    ["build", "--source", "emoji", "--labeler", "truth", "--image-size", "40000", "--out", str(t / "b.json")],
    "image_size <= 1024"))
for seed in ("-1", "123456789012345678901234"):
    case(f"train: seed={seed}")(lambda w, t, s, v=seed: (train_on(w, t, w.data, f"seed={v}"), f"seed = {v}"))
for flags, needle in [(["--batch-size", "0"], "--batch-size 0"), (["--batch-size", "-3"], "--batch-size -3"),
                      (["--device", "meta"], "device 'meta'")]:
    case(f"eval: {' '.join(flags)}")(lambda w, t, s, f=flags, n=needle: (eval_on(w, t, *f), n))
for top in ("0", "-1"):
    case(f"concepts: --top {top}")(lambda w, t, s, v=top: (concepts_on(w, w.data.parent / "images/concept0_0.png")
                                                           + ["--top", v], f"--top {v}"))
for template in ("a {} in {place}", "a {} of {}", "{.__class__.__doc__}", "a {0} {1}"):
    case(f"build: --caption-template {template!r}")(lambda w, t, s, v=template: (
        ["build", "--source", "folder", "--images", str(w.data.parent), "--labeler", "truth", "--caption-template", v,
         "--allow-concept-captions", "--out", str(t / "b.json")], "expected one {} for the concept and no other"))
for label, text, needle in [("nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
                            ("a 5000-digit number", '[{"concept": ' + "9" * 5000 + "}]", "number too long"),
                            ("a key given twice", '[{"concept": "a", "concept": "b"}]', "key 'concept' twice")]:
    case(f"validate: dataset JSON {label}")(lambda w, t, s, x=text, n=needle: (
        ["validate", str(bad_text(t, "d.json", x))], n))


@case("concepts: labels with spaces and tabs around them are stripped", "handled")
def _(w, t, s):
    return concepts_on(w, w.data.parent / "images/concept0_0.png")[:-2] + [
        "--labels", str(bad_text(t, "tabs.txt", " cat\t\ndog \t\n"))], lambda t, out: "cat (" in out and "dog (" in out


@case("concepts: a labels file with a byte-order mark", "handled")
def _(w, t, s):
    (t / "bom.txt").write_bytes("\ufeffcat\ndog\n".encode())
    return concepts_on(w, w.data.parent / "images/concept0_0.png")[:-2] + ["--labels", str(t / "bom.txt")], \
        lambda t, out: "cat (" in out and "ufeff" not in out


for label, data, needle in [("in Latin-1", b"id,captions,image_url\n1,caf\xe9 => a => b => c,http://x/a.jpg\n",
                             "not UTF-8"),
                            ("with a 140,000-character field", b"id,captions,image_url\n1," + b"a" * 140_000 + b",u\n",
                             "not valid CSV")]:
    case(f"eval: HierarCaps CSV {label}")(lambda w, t, s, d=data, n=needle: (
        hierarcaps_eval(w, t, (t / "h.csv").write_bytes(d) and t / "h.csv"), n))


def hierarcaps_eval(w: World, t: Path, data: Path) -> list[str]:
    return ["eval", "--model", str(w.model), "--data", str(data), "--out", str(t / "r.json"), "--format",
            "hierarcaps-csv"]


@case("eval: HierarCaps CSV is a FIFO")
def _(w, t, s):
    os.mkfifo(t / "h.csv")
    return hierarcaps_eval(w, t, t / "h.csv"), "not a regular file"


for command in ("validate", "stats"):
    case(f"{command}: the dataset is a device")(lambda w, t, s, c=command: ([c, "/dev/zero"], "not a regular file"))


@case("concepts: --labels is a device")
def _(w, t, s):
    return (["concepts", str(w.data.parent / "images/concept0_0.png"), "--model", str(w.model), "--labels",
             "/dev/urandom"], "not a regular file")


def _fifo(t: Path, name: str) -> Path:
    os.mkfifo(t / name)
    return t / name


for command in ("validate", "stats"):
    case(f"{command}: the dataset is a FIFO")(lambda w, t, s, c=command: ([c, str(_fifo(t, "d.json"))],
                                                                          "not a regular file"))
case("train: data= a FIFO")(lambda w, t, s: (["train", "--config", str(w.config),
                                              f"data={json.dumps(str(_fifo(t, 'd.json')))}"], "not a regular file"))


@case("resume: sidecar extra_state of ../../..")
def _(w, t, s):
    run, config = copy_run(w, t)
    meta = run / "checkpoints" / "step_000002.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"extra_state": "../../.."}))
    return ["train", "--config", str(config), "--resume", "auto"], "extra_state '../../..'"


@case("concepts: open_clip:RN50:evil.pt with a pickle payload")
def _(w, t, s):
    torch.save({"x": Payload(t / PAYLOAD)}, t / "evil.pt")
    return ["concepts", str(w.data.parent / "images/concept0_0.png"), "--labels", str(labels_file(w)), "--model",
            f"open_clip:RN50:{t / 'evil.pt'}"], "evil.pt holds objects that only arbitrary code can rebuild"


def hf_dir(t: Path) -> Path:
    """A tiny Hugging Face CLIP directory (config and safetensors weights, no tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    layers = dict(hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1)
    config = CLIPConfig(text_config=dict(layers, vocab_size=99, max_position_embeddings=16),
                        vision_config=dict(layers, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(t / "hf")
    return t / "hf"


@case("concepts: hf:DIR whose weights are a pickle payload")
def _(w, t, s):
    folder = hf_dir(t)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save({"x": Payload(t / PAYLOAD)}, folder / "pytorch_model.bin")
    return ["concepts", str(w.data.parent / "images/concept0_0.png"), "--labels", str(labels_file(w)), "--model",
            f"hf:{folder}"], "hold objects that only arbitrary code can rebuild"


@case("concepts: hf:DIR whose config names custom code (auto_map)")
def _(w, t, s):
    folder = hf_dir(t)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModel": "evil.Model"}}))
    (folder / "evil.py").write_text(f"open({str(t / PAYLOAD)!r}, 'w').close()\n")
    return ["concepts", str(w.data.parent / "images/concept0_0.png"), "--labels", str(labels_file(w)), "--model",
            f"hf:{folder}"], "names custom code (auto_map)"


@case("train: a text feature cache that holds a list")
def _(w, t, s):
    torch.save([1, 2, 3], t / "cache.pt")
    return ["train", "--config", str(w.config), "model=\"clearglass:scratch\"", "cache_text_features=true",
            f"text_cache_file={json.dumps(str(t / 'cache.pt'))}", f"out={json.dumps(str(t / 'o'))}"], \
        "cache.pt: expected a text feature cache"


case("eval: --data T T")(lambda w, t, s: (
    ["eval", "--model", str(w.model), "--data", str(w.test_set), str(w.test_set), "--out", str(t / "r.json")],
    "given twice; its items would be counted twice"))
case("train: out=\"\"")(lambda w, t, s: (["train", "--config", str(w.config), "out=\"\""], "out = ''"))
case("eval: --model a .extra.pt")(lambda w, t, s: (
    ["eval", "--model", str(w.run / "checkpoints" / "step_000002.extra.pt"), "--data", str(w.test_set), "--out",
     str(t / "r.json")], "is the resume state (optimizer, sampler) beside a checkpoint"))


def _every_caption_empty(raw: list) -> None:
    for rec in raw:
        for im in rec["train_images"]:
            im["new_captions"] = ["", " "]


case("train: every caption empty")(lambda w, t, s: (train_on(w, t, variant(w, t, _every_caption_empty)),
                                                     "18 train image(s) have no non-empty new_captions"))
case("train: one image in two concepts")(lambda w, t, s: (
    train_on(w, t, variant(w, t, lambda raw: raw[1]["train_images"].append(raw[0]["train_images"][0]))),
    "image 'images/concept0_0.png' is in concept 'concept0' and in concept 'concept1'"))
case("train: images/./x.png and images/x.png in two concepts")(lambda w, t, s: (
    train_on(w, t, variant(w, t, lambda raw: raw[1]["train_images"].append(
        dict(raw[0]["train_images"][0], image="images/./concept0_0.png")))), "is in concept 'concept0' and in"))
case("train: a concept as its own hard negative")(lambda w, t, s: (
    train_on(w, t, variant(w, t, lambda raw: raw[2]["hard_negative"].append(raw[2]["concept"]))),
    "concept 'concept2' names itself as a hard negative"))


def coco_with(t: Path, change: Callable[[dict], object]) -> Path:
    from magic_fixtures import write_coco

    path = write_coco(t / "coco", {1: ["a cat"], 2: ["a dog"]})
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    return t / "coco"


for label, change, needle in [
        ("a COCO id of true", lambda raw: raw["images"][0].update(id=True), "images[0]: expected an object with "
         "integer 'id'"),
        ("two COCO images of one id", lambda raw: raw["images"][1].update(id=raw["images"][0]["id"]),
         "images[1]: id 1 is also images[0]")]:
    case(f"build: {label}")(lambda w, t, s, c=change, n=needle: (
        ["build", "--source", "coco", "--labeler", "truth", "--coco-root", str(coco_with(t, c)), "--out",
         str(t / "b.json"), "--no-progress"], n))
for n in ("-1", "0"):
    case(f"build: --max-images {n}")(lambda w, t, s, v=n: (
        ["build", "--source", "coco", "--labeler", "truth", "--coco-root", str(coco_with(t, lambda raw: None)),
         "--max-images", v, "--out", str(t / "b.json")], f"--max-images {v}: expected"))
case("build: a CSV of a header only")(lambda w, t, s: (
    ["build", "--source", "csv", "--csv", str(bad_text(t, "h.csv", "filepath,title,concept\n")), "--labeler", "truth",
     "--csv-level-keys", "concept", "--out", str(t / "b.json")], "h.csv: a header and no data rows"))


@case("build: a CSV image outside the image root")
def _(w, t, s):
    rows = "filepath,title,concept\n" + "".join(f"{w.data.parent / 'images' / f'concept0_{j}.png'},a photo {j},x\n"
                                                 for j in range(3))
    return ["build", "--source", "csv", "--csv", str(bad_text(t, "out.csv", rows)), "--labeler", "truth",
            "--csv-level-keys", "concept", "--min-group-size", "1", "--out", str(t / "b.json"), "--no-progress"], \
        "is an absolute path: expected a path inside the image root"


def folder_of(t: Path, captions: dict[str, str]) -> Path:
    """ROOT/<concept>/<image>.png with a .txt of each caption text given (image stem -> text)."""
    for stem, text in captions.items():
        concept = t / "root" / stem.split("_")[0]
        concept.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(concept / f"{stem}.png")
        (concept / f"{stem}.txt").write_text(text)
    return t / "root"


case("build: an empty .txt caption file")(lambda w, t, s: (
    ["build", "--source", "folder", "--images", str(folder_of(t, {"cat_0": "a cat\n", "cat_1": "\n \n"})), "--labeler",
     "truth", "--out", str(t / "b.json")], "cat_1.txt: the caption file of 'cat/cat_1.png' is empty"))


@case("build: a folder image that is a link out of the root")
def _(w, t, s):
    root = folder_of(t, {"cat_0": "a cat", "cat_1": "another cat"})
    (root / "cat" / "cat_2.png").symlink_to(w.data.parent / "images" / "concept0_0.png")
    (root / "cat" / "cat_2.txt").write_text("a third cat")
    return ["build", "--source", "folder", "--images", str(root), "--labeler", "truth", "--min-group-size", "1",
            "--out", str(t / "b.json"), "--no-progress"], "outside the image root"


def folder_build(root: Path, out: Path) -> list[str]:
    return ["build", "--source", "folder", "--images", str(root), "--labeler", "truth", "--min-group-size", "1",
            "--out", str(out), "--no-progress"]


@case("build: a folder build again into its image folder skips its own output, counted", "handled")
def _(w, t, s):
    root = folder_of(t, {"cat_0": "a cat", "cat_1": "another cat", "dog_0": "a dog", "dog_1": "another dog"})
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(folder_build(root, root / "magic.json")) == 0

    def check(t: Path, out: str) -> bool:
        ignored = json.loads((t / "root" / "magic.stats.json").read_text())["build"]["source_stats"]["ignored_files"]
        return ignored == {"count": 2, "examples": ["magic.json (this build's own output)",
                                                    "magic.stats.json (this build's own output)"]}
    return folder_build(root, root / "magic.json"), check


@case("build: a folder holding an earlier build's output names it and the fix")
def _(w, t, s):
    root = folder_of(t, {"cat_0": "a cat", "dog_0": "a dog"})
    (root / "old.json").write_text("[]")
    return folder_build(root, t / "b.json"), "old.json: a file directly in the image folder; expected " \
        "ROOT/<concept>/<image> (an earlier build's output? write --out outside the image folder, or move it)"


@case("validate: a truncated PNG", "problem")
def _(w, t, s):
    data = (w.data.parent / "images" / "concept0_0.png").read_bytes()
    name = f"images/cut-{abs(hash(str(t)))}.png"
    (w.data.parent / name).write_bytes(data[:len(data) // 2])
    return ["validate", str(dataset_with(w, t, name))], "truncated"


@case("validate: a symbolic link loop", "problem")
def _(w, t, s):
    name = f"images/loop-{abs(hash(str(t)))}.png"
    (w.data.parent / name).symlink_to(Path(name).name)
    return ["validate", str(dataset_with(w, t, name))], "symbolic link that leads nowhere"


@case("concepts: a symbolic link loop as the image")
def _(w, t, s):
    (t / "loop.png").symlink_to("loop.png")
    return concepts_on(w, t / "loop.png"), "loop.png: not a readable image: a symbolic link loop"


@case("eval: a checkpoint whose every float tensor is NaN")
def _(w, t, s):
    run, _ = copy_run(w, t)
    pt = run / "checkpoints" / "step_000002.pt"
    weights = torch.load(pt, weights_only=True)
    torch.save({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()}, pt)
    return ["eval", "--model", str(pt), "--data", str(w.test_set), "--out", str(t / "r.json")], \
        f"model spec {str(pt)!r}: weight tensor"


case("train: into a folder that holds a run, without --resume")(lambda w, t, s: (
    ["train", "--config", str(w.config)], f"out = {w.run}: holds a run already (metrics.jsonl, latest.json, "
    "checkpoints); continue it with --resume auto, or train into another --out"))


@case("train: into a folder another run holds the lock of")
def _(w, t, s):
    holder = hold_run_lock(t / "out")  # a running train, as a process
    s.callback(holder.wait)
    s.callback(holder.kill)
    return train_on(w, t, w.data), f"another run is training into this folder (it holds {t / 'out' / 'train.lock'})"


@case("resume: a changed lr and loss.tau")
def _(w, t, s):
    run, config = copy_run(w, t)
    old = json.loads(config.read_text())
    return ["train", "--config", str(config), "--resume", "auto", "lr=0.125", "loss.tau=0.25", "log_every=2"], \
        f"2 setting(s) that decide the result differ from the run's: loss.tau {old['loss']['tau']!r} -> 0.25; " \
        f"lr {old['lr']!r} -> 0.125; resume with its settings ({run / 'config.json'})"


@case("resume: a changed batch shape")
def _(w, t, s):
    _, config = copy_run(w, t)
    return ["train", "--config", str(config), "--resume", "auto", "--batch-size", "3x2"], \
        "groups_per_batch 4 -> 3; resume with its settings"


@case("resume: changed log_every, checkpoint_every and device continue", "handled")
def _(w, t, s):
    _, config = copy_run(w, t)
    return ["train", "--config", str(config), "--resume", "auto", "log_every=5", "checkpoint_every=7",
            "device=\"cpu\""], lambda t, out: json.loads(out)["step"] == 2


@case("resume: more steps with --resume-allow-changes continue", "handled")
def _(w, t, s):
    _, config = copy_run(w, t)
    return ["train", "--config", str(config), "--resume", "auto", "steps=3", "--resume-allow-changes"], \
        lambda t, out: json.loads(out)["step"] == 3 and (t / "run" / "checkpoints" / "step_000003.pt").is_file()


for flags, needle in [(["--seed", "-1"], "seed = -1: expected 0 <= seed < 2**63"),
                      (["--seed", "123456789012345678901234"], "seed = 123456789012345678901234: expected")] + [
        (["--template", v], f"template {v!r}: expected one {{}} for the label and no other")
        for v in ("a {x} photo", "a {} of {}", "a {0} {1}", "{.__class__.__doc__}")]:
    case(f"eval: {' '.join(flags)}")(lambda w, t, s, f=flags, n=needle: (eval_on(w, t, *f), n))
case("concepts: --template 'a {} of {}'")(lambda w, t, s: (
    concepts_on(w, w.data.parent / "images/concept0_0.png") + ["--template", "a {} of {}"],
    "template 'a {} of {}': expected one {} for the label"))


def cached_eval(w: World, t: Path, model: Path) -> list[str]:
    """eval with an embedding cache under t/cache, run once quietly; returns the command."""
    args = ["eval", "--model", str(model), "--data", str(w.test_set), "--out", str(t / "r.json"), "--cache-dir",
            str(t / "cache"), "--n-boot", "5"]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    return args


@case("eval: an embedding cache entry of the wrong shape")
def _(w, t, s):
    args = cached_eval(w, t, w.model)
    entry = sorted((t / "cache").glob("texts-*.pt"))[0]
    torch.save(torch.load(entry, weights_only=True) | {"embeddings": torch.zeros(1, 1)}, entry)
    return args, f"{entry}: embedding cache file holds embeddings of shape (1, 1); expected ("


@case("eval: a changed model at the same path reads none of its old cache entries", "handled")
def _(w, t, s):
    model = t / "model.pt"
    shutil.copy(w.model, model)
    shutil.copy(w.model.with_suffix(".json"), model.with_suffix(".json"))
    args = cached_eval(w, t, model)
    first = json.loads((t / "r.json").read_text())["metrics"]
    weights = torch.load(model, weights_only=True)
    torch.save({k: v.flip(0) if v.is_floating_point() and v.ndim else v for k, v in weights.items()}, model)

    def check(t: Path, out: str) -> bool:
        cached = json.loads((t / "r.json").read_text())["metrics"]
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            main(args[:args.index("--cache-dir")] + ["--n-boot", "5", "--out", str(t / "fresh.json")])
        return cached == json.loads((t / "fresh.json").read_text())["metrics"] != first
    return args, check


@case("concepts: a float image with NaN pixels")
def _(w, t, s):
    pixels = np.full((16, 16), 0.5, dtype=np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(t / "nan.tif")
    return concepts_on(w, t / "nan.tif"), "nan.tif: not a readable image: 1 float pixel(s) are NaN or infinite"


# ----------------------------------------------------------------------------------------------------------------
# running a case and judging its outcome

BAR = re.compile(r"\d+%\||: \d+it \[")  # a progress bar's redraw (with a total, or counting)


@dataclass
class Outcome:
    kind: str  # clear | problem | handled | hidden | traceback | silent | payload | leak
    code: int | None
    text: str


def run_case(w: World, name: str, tmp: Path) -> Outcome:
    expect, make = CASES[name]
    tmp.mkdir(parents=True, exist_ok=True)
    out, err = io.StringIO(), io.StringIO()
    keys = {k: SECRET for k in ("OPENAI_API_KEY", "CLEARGLASS_LLM_API_KEY")}
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched_env(keys))
        argv, needle = make(w, tmp, stack)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:  # noqa: BLE001 - what the hostile user would see
            return Outcome("traceback", None, traceback.format_exc())
    written = "".join(p.read_text(errors="replace") for p in tmp.rglob("*") if p.is_file() and p.suffix in
                      (".json", ".txt", ".md", ".jsonl"))
    if SECRET in out.getvalue() + err.getvalue() + written:
        return Outcome("leak", code, err.getvalue())
    if (tmp / PAYLOAD).exists():
        return Outcome("payload", code, err.getvalue())
    lines = [ln for ln in re.split(r"[\r\n]", err.getvalue()) if ln.strip() and not BAR.search(ln)]
    if expect == "handled":
        ok = code == 0 and needle(tmp, out.getvalue())
        return Outcome("handled" if ok else "silent" if code == 0 else "hidden", code, err.getvalue() or out.getvalue())
    if expect == "problem":
        found = code == 1 and any(needle in ln for ln in out.getvalue().splitlines())
        return Outcome("problem" if found else "silent" if code == 0 else "hidden", code, out.getvalue())
    if code == 2 and len(lines) == 1 and lines[0].startswith(f"clearglass {argv[0]}: error: ") and needle in lines[0]:
        return Outcome("clear", code, lines[0])
    return Outcome("silent" if code == 0 else "hidden", code, "\n".join(lines) or out.getvalue())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_or_a_reported_problem(world, tmp_path, name):
    outcome = run_case(world, name, tmp_path)
    assert outcome.kind == EXPECTED[CASES[name][0]], f"{outcome.kind}: {outcome.text}"


def test_a_dropped_unknown_hard_negative_is_counted_in_the_train_result(world, tmp_path):
    raw = json.loads(world.data.read_text())
    raw[0]["hard_negative"] += ["no-such-concept", "nor-this"]
    (world.data.parent / "unknown.json").write_text(json.dumps(raw))
    result = train(tiny_config(world, tmp_path / "out", data=str(world.data.parent / "unknown.json"), steps=1,
                               warmup=0))
    assert result["unknown_hard_negatives"] == 2


def test_allow_outside_root_lets_train_and_validate_use_such_ids(world, tmp_path, capsys):
    outside = tmp_path / "elsewhere.png"
    shutil.copy(world.data.parent / "images" / "concept0_0.png", outside)
    data = dataset_with(world, tmp_path, str(outside))
    assert main(["validate", str(data), "--allow-outside-root"]) == 0
    result = train(tiny_config(world, tmp_path / "out", data=str(data), steps=1, warmup=0, allow_outside_root=True))
    assert result["step"] == 1


@pytest.mark.parametrize("command", [
    ["eval", "--model", "clearglass-mini", "--data", "{data}", "--out", "{tmp}/r.json"],
    ["compare", "--models", "clearglass-mini", "default", "--data", "{data}", "--out", "{tmp}/cmp"],
    ["concepts", "{image}", "--labels", "{labels}", "--model", "clearglass-mini"],
    ["train", "--train-data", "{data}", "--steps", "5", "--warmup", "1", "--out", "{tmp}/run"],
])
def test_cuda_without_a_gpu_names_the_device_not_a_model(tmp_path, capsys, monkeypatch, command):
    """clearglass-mini's base is another spec: a model moved to a missing GPU used to blame that base's spec."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_tiny_magic(tmp_path / "data", concepts=4, images_per_concept=2, held_out=0)
    (tmp_path / "labels.txt").write_text("red\nblue\n")
    values = {"data": tmp_path / "data" / "magic.json", "tmp": tmp_path, "labels": tmp_path / "labels.txt",
              "image": tmp_path / "data" / "images" / "concept0_0.png"}
    assert main([part.format(**values) for part in command] + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert f"clearglass {command[0]}: error: device 'cuda': " in err and "model spec" not in err
    assert "use --device auto or cpu" in err


def test_every_command_defaults_to_the_auto_device():
    from clearglass.cli import build_parser
    from clearglass.cli.train import training_config

    parser = build_parser()
    for argv in (["eval", "--model", "m", "--data", "d.json", "--out", "r.json"],
                 ["compare", "--models", "m", "--data", "d.json", "--out", "o"], ["concepts", "x.png"]):
        assert parser.parse_args(argv).device == "auto"
    assert training_config(parser.parse_args(["train"])).device == "auto"


def test_version_and_help(capsys):
    from clearglass import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"clearglass {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Teach CLIP-family models abstract concepts" in text and "examples:" in text
    assert "Each module here registers" not in text  # the developers' docstring is not the help
    for command in ("validate", "stats", "eval", "compare", "concepts"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert re.search(rf"examples?:\s+clearglass {command} ", capsys.readouterr().out), command


def hostile_rerun() -> Counter:
    """Every case once, in a fresh folder; prints one line per case that is not as expected, and the counts."""
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        w = make_world(Path(folder) / "world")
        for k, name in enumerate(CASES):
            outcome = run_case(w, name, Path(folder) / f"case{k}")
            counts[outcome.kind] += 1
            if outcome.kind not in EXPECTED.values():
                print(f"{name}: {outcome.kind}: {outcome.text[-600:]}")
    print(f"cases: {sum(counts.values())}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return counts


if __name__ == "__main__":
    hostile_rerun()
