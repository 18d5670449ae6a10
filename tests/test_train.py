"""Training: configs and overrides, schedule and optimizer, resume round trips (incl. SIGKILL), NaN stop, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clearglass import cli
from clearglass.errors import ClearglassError
from clearglass.losses import GroupedContrastiveLoss
from clearglass.train import TrainConfig, train
from clearglass.train.run import cosine_factor, make_optimizer
from tiny_magic import tiny_train_config as tiny_config
from tiny_magic import write_tiny_magic, write_tiny_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny MAGIC dataset, with a tiny model checkpoint beside it (tiny_config's model spec)."""
    root = tmp_path_factory.mktemp("magic")
    write_tiny_model(root / "tiny-model.pt")
    return write_tiny_magic(root, concepts=6, images_per_concept=3)


def weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_shipped_configs_load_and_overrides_parse():
    for name in ("default-grouped", "default-clip", "coco-vitb32"):
        config = TrainConfig.load(name)
        assert config.to_dict() == TrainConfig.from_dict(config.to_dict()).to_dict()
    assert TrainConfig.load("default-clip").loss.kind == "clip"
    assert TrainConfig.load("coco-vitb32").model == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    config = TrainConfig.load("default-grouped", ["loss.alpha=0.5", "loss.inner=null", "data=x.json", "lr=1",
                                                  "pretrain.steps=3"])
    assert (config.loss.alpha, config.loss.inner, config.data, config.lr, config.pretrain.steps) == (0.5, None, "x.json",
                                                                                                      1.0, 3)
    with pytest.raises(ClearglassError, match=r"unknown key 'loss.alpah'; did you mean 'loss.alpha'\?"):
        TrainConfig.load("default-grouped", ["loss.alpah=0.5"])
    with pytest.raises(ClearglassError, match="steps = 'many'"):
        TrainConfig.load("default-grouped", ["steps=many"])
    with pytest.raises(ClearglassError, match="expected key=value"):
        TrainConfig.load("default-grouped", ["steps"])


def test_cosine_schedule_and_no_decay_on_gains_and_biases():
    assert [cosine_factor(s, 10, 2) for s in (0, 1)] == [0.5, 1.0]
    assert cosine_factor(2, 10, 2) == 1.0 and cosine_factor(6, 10, 2) == pytest.approx(0.5)
    assert cosine_factor(10, 10, 2) == pytest.approx(0.0)
    layer, norm = torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)
    scale = torch.nn.Parameter(torch.zeros(()))
    params = [("w", layer.weight), ("b", layer.bias), ("g", norm.weight), ("nb", norm.bias), ("s", scale)]
    config = TrainConfig(data="x", weight_decay=0.3)
    groups = make_optimizer(params, config).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 0.3), (4, 0.0)]
    assert groups[0]["params"][0] is layer.weight


@pytest.mark.parametrize("workers", [0, 2])
def test_train_and_resume_from_a_checkpoint_match_an_uninterrupted_run(dataset, tmp_path, workers):
    full = train(tiny_config(dataset, tmp_path / "full", checkpoint_every=2, num_workers=workers))
    assert full["step"] == 4 and Path(full["checkpoint"]).name == "step_000004.pt"
    lines = [json.loads(ln) for ln in Path(full["metrics_path"]).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert {"loss", "outer_loss", "inner_loss", "lr", "logit_scale", "time"} <= lines[0].keys()
    meta = json.loads((tmp_path / "full" / "checkpoints" / "step_000004.json").read_text())
    assert meta["train_config"]["steps"] == 4 and len(meta["dataset_sha256"]) == 64 and meta["metrics"]["loss"] > 0
    resumed = train(tiny_config(dataset, tmp_path / "resumed", num_workers=workers),
                    resume=str(tmp_path / "full/checkpoints/step_000002.pt"))
    assert [json.loads(ln)["step"] for ln in Path(resumed["metrics_path"]).read_text().splitlines()] == [3, 4]
    assert_same_weights(weights(full["checkpoint"]), weights(resumed["checkpoint"]))
    assert resumed["metrics"]["loss"] == full["metrics"]["loss"]


def test_sigkill_then_resume_auto_ends_with_the_same_weights(dataset, tmp_path):
    config = tiny_config(dataset, tmp_path / "killed", steps=40, checkpoint_every=2)
    path = tmp_path / "killed.json"
    path.write_text(json.dumps(config.to_dict()))
    command = [sys.executable, "-m", "clearglass.train", "--config", str(path)]
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "latest.json"
    deadline = time.monotonic() + 120
    while not (latest.exists() and json.loads(latest.read_text())["step"] >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert proc.returncode == -signal.SIGKILL and killed_at < 40
    metrics = tmp_path / "killed" / "metrics.jsonl"
    before = metrics.read_text().splitlines()[:killed_at]  # the resumed run keeps these and redoes nothing
    done = subprocess.run(command + ["--resume", "auto"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = metrics.read_text().splitlines()
    assert after[:killed_at] == before and [json.loads(ln)["step"] for ln in after] == list(range(1, 41))
    train(tiny_config(dataset, tmp_path / "full", steps=40))  # in-process, on one thread like the subprocesses
    assert_same_weights(weights(tmp_path / "full/checkpoints/step_000040.pt"),
                        weights(tmp_path / "killed/checkpoints/step_000040.pt"))


def test_non_finite_loss_stops_with_the_step_and_terms_and_writes_no_nan_checkpoint(dataset, tmp_path, monkeypatch):
    forward = GroupedContrastiveLoss.forward
    calls = []

    def nan_on_third(self, image_features, text_features, text_negatives=None):
        out = forward(self, image_features, text_features, text_negatives)
        calls.append(1)
        if len(calls) == 3:
            out["inner_loss"] = out["inner_loss"] * math.nan
            out["loss"] = out["loss"] * math.nan
        return out

    monkeypatch.setattr(GroupedContrastiveLoss, "forward", nan_on_third)
    with pytest.raises(ClearglassError, match=r"step 2: non-finite loss \(loss=nan, outer_loss=[0-9.]+, inner_loss=nan\)"):
        train(tiny_config(dataset, tmp_path / "nan", checkpoint_every=1))
    assert sorted(p.name for p in (tmp_path / "nan/checkpoints").glob("step_??????.pt")) == ["step_000001.pt",
                                                                                       "step_000002.pt"]
    assert json.loads((tmp_path / "nan/latest.json").read_text())["step"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "nan/checkpoints/step_000002.pt").values()
               if v.is_floating_point())


def test_clip_baseline_and_caption_pretraining_stage(dataset, tmp_path):
    result = train(tiny_config(dataset, tmp_path / "clip", steps=2, **{"loss.kind": "clip"}))
    assert result["step"] == 2 and "inner_loss" not in result["metrics"]
    config = tiny_config(dataset, tmp_path / "pre", steps=1, **{"pretrain.steps": 2, "pretrain.batch_size": 8,
                                                                      "lock.lock_text": False})
    records = [json.loads(ln) for ln in Path(train(config)["metrics_path"]).read_text().splitlines()]
    assert [r["stage"] for r in records] == ["pretrain", "pretrain", "main"]
    assert records[0]["lr"] == pytest.approx(config.pretrain.lr)


def test_cached_text_features_train_like_computed_ones(dataset, tmp_path):
    """cache_text_features=true (frozen MiniLM run once per caption) ends with the weights of the plain run."""
    runs = {}
    for cached in (False, True):
        config = tiny_config(dataset, tmp_path / str(cached), steps=3, model="default",
                             **{"lock.lock_text": True, "cache_text_features": cached})
        runs[cached] = weights(train(config)["checkpoint"])
    for key, value in runs[False].items():
        torch.testing.assert_close(runs[True][key], value, rtol=1e-4, atol=1e-5, msg=key)
    with pytest.raises(ClearglassError, match="no Hugging Face text tower"):
        train(tiny_config(dataset, tmp_path / "tiny", cache_text_features=True))


def test_cli_train_end_to_end_and_bad_input_exits_2(dataset, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(tiny_config(dataset, tmp_path / "cli", steps=2).to_dict()))
    assert cli.main(["train", "--config", str(config), "log_every=2"]) == 0
    assert (tmp_path / "cli/checkpoints/step_000002.pt").is_file()
    assert len((tmp_path / "cli/metrics.jsonl").read_text().splitlines()) == 1
    assert cli.main(["train", "--config", str(config), "data=\"missing.json\""]) == 2
    assert "missing.json: dataset file not found" in capsys.readouterr().err


def _validation_file(dataset: Path) -> Path:
    """The tiny dataset's train images as the test images of a validation file beside it (same image root)."""
    from clearglass.magic.schema import ConceptRecord, load_concepts, save_concepts

    path = dataset.with_name("val.json")
    save_concepts([ConceptRecord(c.concept, c.hard_negative, [], c.train_images) for c in load_concepts(dataset)
                   if c.train_images], path)
    return path


def test_validation_rows_keep_best_and_early_stopping(dataset, tmp_path):
    """eval_every writes val/ rows to metrics.jsonl; keep_best keeps the first step of the best score; patience stops."""
    val_file = str(_validation_file(dataset))
    config = tiny_config(dataset, tmp_path / "val", steps=6, eval_every=1, eval_data=val_file, keep_best=True,
                         eval_metrics=["retrieval/old_captions/i2t_R@1", "retrieval/old_captions/t2i_R@1"])
    result = train(config)
    rows = [json.loads(ln) for ln in Path(result["metrics_path"]).read_text().splitlines()]
    val = [r for r in rows if "val/score" in r]
    assert [r["step"] for r in val] == list(range(1, 7))
    for r in val:
        assert r["val/score"] == pytest.approx((r["val/retrieval/old_captions/i2t_R@1"]
                                                + r["val/retrieval/old_captions/t2i_R@1"]) / 2)
    assert all(r["val/seconds"] > 0 for r in val)
    best = max(val, key=lambda r: (r["val/score"], -r["step"]))  # the first step with the best score
    meta = json.loads((tmp_path / "val/checkpoints/best.json").read_text())
    assert result["best"]["step"] == best["step"] == meta["step"] and result["best"]["score"] == best["val/score"]
    assert (tmp_path / "val/checkpoints/best.pt").is_file()
    stopped = train(tiny_config(dataset, tmp_path / "stop", steps=50, eval_every=1, eval_data=val_file,
                                early_stop_patience=2, lr=1e-9, eval_metrics=["retrieval/old_captions/i2t_R@1"]))
    assert stopped["stopped_early"] and stopped["step"] == stopped["best"]["step"] + 2 < 50
    assert Path(stopped["checkpoint"]).name == f"step_{stopped['step']:06d}.pt"
    with pytest.raises(ClearglassError, match="need validation"):
        tiny_config(dataset, tmp_path / "x", keep_best=True)


def test_a_text_cache_file_is_filled_once_and_reused(dataset, tmp_path, monkeypatch):
    from clearglass.models import FrozenTextCache

    cache = tmp_path / "text-cache.pt"
    kwargs = {"model": "default", "steps": 2, "lock.lock_text": True, "cache_text_features": True,
              "text_cache_file": str(cache)}
    first = weights(train(tiny_config(dataset, tmp_path / "a", **kwargs))["checkpoint"])
    stored = torch.load(cache, weights_only=True)
    assert stored["rows"].shape[0] == stored["pooled"].shape[0] > 0
    calls = []
    monkeypatch.setattr(FrozenTextCache, "_encode_missing", lambda self, tokens, keys: calls.append(
        [k for k in keys if k not in self.store]) or None)
    second = weights(train(tiny_config(dataset, tmp_path / "b", **kwargs))["checkpoint"])
    assert all(not missing for missing in calls)  # every caption came from the file
    assert_same_weights(first, second)
