"""Training: configs and overrides, schedule and optimizer, resume round trips (incl. SIGKILL), NaN stop, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clearglass import cli
from clearglass.errors import ClearglassError
from clearglass.losses import GroupedContrastiveLoss
from clearglass.train import TrainConfig, train
from clearglass.train.run import FREE_ON_RESUME, Run, _start, cosine_factor, make_optimizer, run_lock
from tiny_magic import hold_run_lock, write_tiny_magic, write_tiny_model
from tiny_magic import tiny_train_config as tiny_config

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
    assert (config.loss.alpha, config.loss.inner, config.data, config.lr,
            config.pretrain.steps) == (0.5, None, "x.json", 1.0, 3)
    with pytest.raises(ClearglassError, match=r"unknown key 'loss.alpah'; did you mean 'loss.alpha'\?"):
        TrainConfig.load("default-grouped", ["loss.alpah=0.5"])
    with pytest.raises(ClearglassError, match="steps = 'many'"):
        TrainConfig.load("default-grouped", ["steps=many"])
    with pytest.raises(ClearglassError, match="expected key=value"):
        TrainConfig.load("default-grouped", ["steps"])


def test_the_model_a_training_config_starts_from_is_the_pretrained_default():
    from clearglass.models import DEFAULT_MODEL

    assert DEFAULT_MODEL == "clearglass-mini" and TrainConfig().model == DEFAULT_MODEL
    assert [TrainConfig.load(name).model for name in ("default-grouped", "default-clip")] == [DEFAULT_MODEL] * 2
    assert TrainConfig.load("mini-pretrain", ["eval_data=v.json"]).model == "clearglass:scratch"  # makes the mini


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
    done = subprocess.run(command + ["--resume", "auto"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = metrics.read_text().splitlines()
    assert after[:killed_at] == before and [json.loads(ln)["step"] for ln in after] == list(range(1, 41))
    train(tiny_config(dataset, tmp_path / "full", steps=40))  # in-process, on one thread like the subprocesses
    assert_same_weights(weights(tmp_path / "full/checkpoints/step_000040.pt"),
                        weights(tmp_path / "killed/checkpoints/step_000040.pt"))


def test_the_run_folder_lock_refuses_a_second_run_and_is_released_on_every_exit(dataset, tmp_path):
    """A lock on out/train.lock: a second run fails at once naming the lock; an error, a KeyboardInterrupt (SIGINT
    outside the step loop) and a SIGKILL of the holder all release it (the lock file stays and blocks nothing)."""
    out = tmp_path / "run"
    holder = hold_run_lock(out)
    try:
        start = time.monotonic()
        with pytest.raises(ClearglassError) as e:
            train(tiny_config(dataset, out))
        assert time.monotonic() - start < 5 and str(e.value) == (
            f"out = {out}: another run is training into this folder (it holds {out / 'train.lock'}); wait for it to "
            "end, or train into another --out")
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the OS drops its lock
        holder.wait()
    for stop in (ClearglassError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(stop)):
            with run_lock(out):
                raise stop
    assert train(tiny_config(dataset, out, steps=1, warmup=0))["step"] == 1
    assert (out / "train.lock").is_file()


def test_a_fresh_run_into_a_run_folder_is_refused_and_a_resume_with_other_settings_too(dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(dataset, out))
    with pytest.raises(ClearglassError, match=f"out = {out}: holds a run already \\(metrics.jsonl, latest.json, "
                                              "checkpoints\\); continue it with --resume auto, or train into another"):
        train(tiny_config(dataset, out))
    changed = tiny_config(dataset, out, lr=0.125, groups_per_batch=3, log_every=2, checkpoint_every=3, steps=5)
    with pytest.raises(ClearglassError) as e:
        train(changed, resume="auto")
    assert "3 setting(s) that decide the result differ from the run's: groups_per_batch 4 -> 3; lr 0.001 -> " \
        f"0.125; steps 4 -> 5; resume with its settings ({out / 'config.json'})" in str(e.value)
    assert "log_every" not in str(e.value) and "checkpoint_every" not in str(e.value)
    same = tiny_config(dataset, out, log_every=2, checkpoint_every=3, device="cpu", num_workers=1,
                       eval_tasks=["recognition"], **{"loss.chunk": 2})
    assert train(same, resume="auto")["step"] == 4  # settings that do not change the result may change
    longer = tiny_config(dataset, out, steps=5)
    assert train(longer, resume="auto", allow_changes=True)["step"] == 5  # the user said so
    assert train(tiny_config(dataset, out), overwrite=True)["step"] == 4  # a library caller's own earlier run
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not (out / "checkpoints" / "step_000005.pt").exists()


def test_the_settings_free_on_resume_are_the_ones_the_docs_name():
    text = (REPO / "docs" / "reliability.md").read_text()
    listed = text.split("all but `FREE_ON_RESUME`")[1].split(") is refused")[0]
    assert set(re.findall(r"`([a-z_.]+)`", listed)) == FREE_ON_RESUME


def test_a_rank_other_than_0_leaves_temporary_files_alone(tmp_path):
    """Under torchrun rank 0 alone writes the run folder: a temporary file there may be its write in progress (a
    rank removing it made rank 0's config.json write fail at random in a two-process run)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    in_flight = [out / ".config.json.k2j3.tmp", out / "checkpoints" / ".step_000002.pt.a1b2.tmp"]
    for path in in_flight:
        path.write_bytes(b"rank 0 is writing this")
    run = SimpleNamespace(out=out, config=None, rank=1)
    assert _start(run, resume=None) == (None, None)
    assert all(p.exists() for p in in_flight)


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
    with pytest.raises(ClearglassError,
                       match=r"step 2: non-finite loss \(loss=nan, outer_loss=[0-9.]+, inner_loss=nan\)"):
        train(tiny_config(dataset, tmp_path / "nan", checkpoint_every=1))
    assert sorted(p.name for p in (tmp_path / "nan/checkpoints").glob("step_??????.pt")) == ["step_000001.pt",
                                                                                       "step_000002.pt"]
    assert json.loads((tmp_path / "nan/latest.json").read_text())["step"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "nan/checkpoints/step_000002.pt").values()
               if v.is_floating_point())


def test_clip_baseline_and_caption_pretraining_stage(dataset, tmp_path):
    result = train(tiny_config(dataset, tmp_path / "clip", steps=2, **{"loss.kind": "clip"}))
    assert result["step"] == 2 and "inner_loss" not in result["metrics"]
    config = tiny_config(dataset, tmp_path / "pre", steps=1, warmup=0, **{"pretrain.steps": 2, "pretrain.batch_size": 8,
                                                                      "lock.lock_text": False})
    records = [json.loads(ln) for ln in Path(train(config)["metrics_path"]).read_text().splitlines()]
    assert [r["stage"] for r in records] == ["pretrain", "pretrain", "main"]
    assert records[0]["lr"] == pytest.approx(config.pretrain.lr)


def test_cached_text_features_train_like_computed_ones(dataset, tmp_path):
    """cache_text_features=true (frozen MiniLM run once per caption) ends with the weights of the plain run."""
    runs = {}
    for cached in (False, True):
        config = tiny_config(dataset, tmp_path / str(cached), steps=3, model="clearglass:scratch",
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
    """eval_every writes val/ rows to metrics.jsonl; keep_best keeps the first step of the best score; patience
    stops."""
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
    kwargs = {"model": "clearglass:scratch", "steps": 2, "lock.lock_text": True, "cache_text_features": True,
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


def _rows(result: dict) -> list[dict]:
    return [json.loads(ln) for ln in Path(result["metrics_path"]).read_text().splitlines()]


def test_self_regularisation_starts_at_zero_is_logged_and_resumes_exactly(dataset, tmp_path):
    """loss.self_reg: the term is 0 on the first step (the model is the base), a named term of the loss after, and a
    resumed run compares with the initial model (not the restored one), ending with the uninterrupted run's weights."""
    kwargs = {"loss.self_reg": 1.0, "checkpoint_every": 2}
    full = train(tiny_config(dataset, tmp_path / "full", **kwargs))
    rows = _rows(full)
    assert rows[0]["self_reg_loss"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["self_reg_loss"] > 1e-6 for r in rows[1:])
    for r in rows:
        assert r["loss"] == pytest.approx(0.7 * r["outer_loss"] + 0.3 * r["inner_loss"] + r["self_reg_loss"])
    plain = _rows(train(tiny_config(dataset, tmp_path / "plain")))
    assert "self_reg_loss" not in plain[0] and plain[0]["loss"] == pytest.approx(rows[0]["loss"], abs=1e-6)
    resumed = train(tiny_config(dataset, tmp_path / "resumed", **kwargs),
                    resume=str(tmp_path / "full/checkpoints/step_000002.pt"))
    assert [r["step"] for r in _rows(resumed)] == [3, 4]
    assert_same_weights(weights(full["checkpoint"]), weights(resumed["checkpoint"]))


@pytest.mark.parametrize("kind", ["clip", "multilevel"])
def test_self_regularisation_of_both_towers_with_every_loss_kind(dataset, tmp_path, kind):
    config = tiny_config(dataset, tmp_path / kind, steps=2, **{"loss.kind": kind, "loss.self_reg": 0.5,
                                                                "loss.self_reg_features": "both",
                                                                "lock.lock_text": False})
    rows = _rows(train(config))
    assert rows[0]["self_reg_loss"] == pytest.approx(0.0, abs=1e-6) and rows[1]["self_reg_loss"] > 1e-6


def test_self_regularisation_copy_is_made_only_when_on_and_shares_frozen_weights(dataset, tmp_path):
    assert Run(tiny_config(dataset, tmp_path / "off")).base is None
    run = Run(tiny_config(dataset, tmp_path / "on", **{"loss.self_reg": 0.1}))
    live, base = dict(run.model.named_parameters()), dict(run.base.features.model.named_parameters())
    assert live.keys() == base.keys() and not any(p.requires_grad for p in base.values())
    assert not run.base.features.model.training
    for name, p in live.items():  # frozen tensors are shared; trainable ones copied, equal, and still trainable
        assert (base[name] is p) == (not p.requires_grad) and torch.equal(base[name], p), name
    assert any(p.requires_grad for p in live.values()) and any(not p.requires_grad for p in live.values())
    with pytest.raises(ClearglassError, match=r"self_reg_features='text' regularises the text features, but no "
                                              r"parameter behind them is trainable"):
        train(tiny_config(dataset, tmp_path / "locked", steps=1, warmup=0, **{"loss.self_reg": 0.1,
                                                                      "loss.self_reg_features": "text"}))
    with pytest.raises(ClearglassError, match=r"loss.self_reg: expected a finite weight >= 0, got -1.0"):
        tiny_config(dataset, tmp_path / "x", **{"loss.self_reg": -1.0})
    with pytest.raises(ClearglassError, match="self_reg_features"):
        tiny_config(dataset, tmp_path / "x", **{"loss.self_reg_features": "audio"})


def test_self_regularisation_of_cached_text_features_reuses_the_cache(dataset, tmp_path):
    """With the frozen MiniLM's outputs cached, the base reads the same store: its text features cost a projection.
    The default model's ResNet has batch norm: the base uses the batch's statistics as the model does (0 at the
    first step) and its own state, running statistics included, never changes."""
    config = tiny_config(dataset, tmp_path / "cached", steps=2, model="clearglass:scratch",
                         **{"lock.lock_text": True, "cache_text_features": True, "loss.self_reg": 1.0,
                            "loss.self_reg_features": "both"})
    run = Run(config)
    assert run.base.features.encode_text.store is run.text_cache.store and run.base.norms
    before = {k: v.clone() for k, v in run.base.features.model.state_dict().items()}
    rows = [run.step(run.next_batch()) for _ in range(2)]
    assert rows[0]["self_reg_loss"] == pytest.approx(0.0, abs=1e-6) and rows[1]["self_reg_loss"] > 1e-6
    assert_same_weights(before, run.base.features.model.state_dict())


def test_warmup_ends_before_its_stage_does():
    assert TrainConfig(data="x", steps=10, warmup=9).warmup == 9
    with pytest.raises(ClearglassError, match="warmup = 10 >= steps = 10"):
        TrainConfig(data="x", steps=10, warmup=10)
    with pytest.raises(ClearglassError, match="warmup = 3 >= steps = 3"):
        TrainConfig.from_dict({"data": "x", "pretrain": {"steps": 3, "warmup": 3}})
    assert TrainConfig.from_dict({"pretrain": {"steps": 0, "warmup": 0}}).pretrain.steps == 0


def _train_args(*argv: str):
    from clearglass.cli.train import training_config

    return training_config(cli.build_parser().parse_args(["train", *argv]))


def test_open_clip_style_flags_set_the_config_keys(dataset, tmp_path):
    c = _train_args("--train-data", str(dataset), "--model", "m.pt", "--lr", "1e-3", "--steps", "20", "--warmup",
                    "2", "--batch-size", "4x2", "--report-to", "tensorboard", "wandb", "--lock-image-unlocked-groups",
                    "2", "--precision", "bf16", "--device", "cpu", "--seed", "7", "--out", str(tmp_path / "r"),
                    "loss.alpha=0.5", "caption_field=old_captions")
    assert (c.data, c.model, c.lr, c.steps, c.warmup, c.groups_per_batch, c.pairs_per_group) == (
        str(dataset), "m.pt", 1e-3, 20, 2, 4, 2)
    assert (c.report_to, c.lock.lock_image, c.lock.lock_image_unlocked_layers, c.precision, c.device, c.seed) == (
        ["tensorboard", "wandb"], True, 2, "bf16", "cpu", 7)
    assert (c.out, c.loss.alpha, c.caption_field) == (str(tmp_path / "r"), 0.5, "old_captions")
    assert _train_args("--dataset", "d.json", "report_to=tensorboard").report_to == ["tensorboard"]
    assert _train_args("--dataset", "d.json", "--lock-image").lock.lock_image
    defaults = TrainConfig.load("default-grouped")
    assert _train_args().to_dict() == defaults.to_dict()  # no flag: the default config as it is


def test_epochs_are_steps_of_the_datasets_batches(dataset):
    # 6 train groups, one anchor a batch: 6 grouped batches an epoch; 18 train images: 3 CLIP batches of 5
    c = _train_args("--train-data", str(dataset), "--batch-size", "4x2", "--epochs", "2", "--warmup", "1")
    assert (c.steps, c.groups_per_batch, c.pairs_per_group) == (12, 4, 2)
    c = _train_args("--config", "default-clip", "--train-data", str(dataset), "--batch-size", "5", "--epochs", "1",
                    "--warmup", "1")
    assert (c.steps, c.groups_per_batch, c.pairs_per_group) == (3, 5, 1)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "7x2", "--steps", "5", "--warmup", "1"],
     "--batch-size 7x2: the dataset has 6 train groups; a batch needs groups_per_batch = 7"),
    (["--config", "default-clip", "--batch-size", "19"], "--batch-size 19: the dataset has 18 train images"),
    (["--batch-size", "8"], "--batch-size 8: loss.kind 'grouped' trains on M groups x N pairs"),
    (["--config", "default-clip", "--batch-size", "4x2"], "--batch-size 4x2: loss.kind 'clip' trains on random pairs"),
    (["--epochs", "1", "--steps", "3"], "--epochs 1 and --steps 3 both set the run's length"),
    (["--lr", "0.1", "lr=0.2"], "lr is set twice: by --lr 0.1 and by 'lr=0.2'"),
    (["--batch-size", "4x2", "pairs_per_group=3"], "pairs_per_group is set twice: by --batch-size 4x2"),
    (["--steps", "10"], "warmup = 50 >= steps = 10"),
    (["--batch-size", "4x2", "--epochs", "1"], "--epochs 1 (= 6 steps, 6 batches an epoch): "),
    (["--batch-size", "4x2", "--epochs", "1"], "default-grouped.json: warmup = 50 >= steps = 6"),
    (["stpes=10"], "unknown key 'stpes'; did you mean 'steps'?"),
])
def test_contradicting_flags_exit_2_before_a_model_loads(dataset, capsys, monkeypatch, argv, message):
    import clearglass.train.run as run_module

    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert cli.main(["train", "--train-data", str(dataset), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_batch_the_data_cannot_fill_fails_before_the_model_loads(dataset, tmp_path, monkeypatch):
    import clearglass.train.run as run_module

    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ClearglassError, match="a batch needs groups_per_batch = 7"):
        train(tiny_config(dataset, tmp_path / "big", groups_per_batch=7))


def test_train_help_lists_every_config_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--batch-size" in text and "--lock-image-unlocked-groups" in text
    lines = {line.split()[0]: line for line in text.splitlines() if " = " in line and line.startswith("  ")}
    for key, _, default in TrainConfig.key_defaults():
        assert f" = {json.dumps(default)}  (" in lines[key]


def test_cli_train_with_open_clip_flags_end_to_end(dataset, tmp_path, capsys):
    out = tmp_path / "flags"
    assert cli.main(["train", "--dataset", str(dataset), "--model", str(dataset.parent / "tiny-model.pt"),
                     "--batch-size", "4x2", "--epochs", "1", "--warmup", "1", "--lr", "1e-3", "--seed", "1",
                     "--device", "cpu", "--lock-image-unlocked-groups", "1", "--out", str(out), "log_every=2",
                     "checkpoint_every=100"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 6 and Path(result["checkpoint"]) == out / "checkpoints/step_000006.pt"
    saved = json.loads((out / "config.json").read_text())
    assert (saved["steps"], saved["groups_per_batch"], saved["pairs_per_group"], saved["seed"], saved["lr"]) == (
        6, 4, 2, 1, 1e-3)
    assert saved["lock"]["lock_image"] and saved["lock"]["lock_image_unlocked_layers"] == 1
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]


def test_epochs_check_the_warmup_against_their_own_steps(dataset):
    c = _train_args("--train-data", str(dataset), "--batch-size", "4x2", "--epochs", "100", "--warmup", "550")
    assert (c.steps, c.warmup) == (600, 550)  # the config file's 500 steps are not what warmup is checked against


def test_build_makes_frozen_parts_in_order_and_a_run_holds_them(dataset, tmp_path, monkeypatch):
    import dataclasses

    from clearglass.train import run as run_module
    from clearglass.train.run import Best, Parts, build

    parts = build(tiny_config(dataset, tmp_path / "a", **{"loss.self_reg": 0.1}))
    assert isinstance(parts, Parts) and parts.main.sampler is parts.data.sampler and parts.pre is None
    assert parts.model is parts.bundle.model and parts.base is not None and parts.validation is None
    assert [p for group in parts.optimizer.param_groups for p in group["params"]] == \
        [p for _, p in parts.params if p.ndim >= 2] + [p for _, p in parts.params if p.ndim < 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.loss_fn = None
    run = Run(tiny_config(dataset, tmp_path / "b"))
    assert run.best == Best() and run.model is run.parts.model and run.main is run.parts.main
    loaded = []
    monkeypatch.setattr(run_module, "load_model", lambda *a: loaded.append(a))
    with pytest.raises(ClearglassError, match="groups_per_batch"):  # the data fails before any model loads
        build(tiny_config(dataset, tmp_path / "c", groups_per_batch=100))
    assert loaded == []
