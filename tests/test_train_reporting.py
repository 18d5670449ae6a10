"""report_to: the scalars of metrics.jsonl go to Weights & Biases (offline here) and TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest

from clearglass.errors import ClearglassError
from clearglass.train.reporting import Reporters


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log(self, scalars: dict, step: int) -> None:
        self.logged.append((scalars, step))

    def finish(self) -> None:
        self.logged.append(({"finished": 1.0}, -1))


def test_rows_become_train_and_val_scalars(tmp_path: Path) -> None:
    reporters = Reporters([], tmp_path, {})
    reporters.wandb = fake = _FakeRun()
    reporters.log({"step": 3, "loss": 0.5, "stage": "main", "lr": 1e-3, "time": 9.0, "val/score": 0.25})
    reporters.close()
    assert fake.logged[0] == ({"train/loss": 0.5, "train/lr": 1e-3, "val/score": 0.25}, 3)
    assert fake.logged[-1][1] == -1


def test_wandb_offline_writes_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'clearglass[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    reporters = Reporters(["wandb"], out, {"lr": 1e-3})
    for step in (1, 2):
        reporters.log({"step": step, "loss": 1.0 / step, "val/score": 0.1 * step})
    reporters.close()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # the offline run's record log
    assert log.count(b"train/loss") >= 2 and b"val/score" in log


def test_tensorboard_gets_the_same_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'clearglass[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reporters = Reporters(["tensorboard"], tmp_path, {})
    for step in (1, 2):
        reporters.log({"step": step, "loss": 1.0 / step, "stage": "main", "val/score": 0.1 * step})
    reporters.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "val/score"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/score")] == [(1, 0.1), (2, 0.2)]


def test_a_missing_logger_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ClearglassError, match=r"pip install 'clearglass\[wandb\]'"):
        Reporters(["wandb"], tmp_path, {})
