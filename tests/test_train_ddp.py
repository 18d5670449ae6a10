"""Distributed training: 2 CPU processes (gloo) follow the same loss curve as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clearglass.train import CONFIG_DIR, TrainConfig
from tiny_magic import write_tiny_magic, write_tiny_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def losses(out: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_cpu_processes_match_one_process(tmp_path):
    """Global loss and local_loss, both with a learnt temperature (whose gradient the trainer averages itself), and
    the self-regularisation term (each rank's mean over its own pairs; DDP's gradient mean makes it the global one)."""
    data = write_tiny_magic(tmp_path, concepts=8, images_per_concept=3)
    model = write_tiny_model(tmp_path / "tiny-model.pt")
    items = [f"data={json.dumps(str(data))}", f"model={json.dumps(str(model))}", "groups_per_batch=4",
             "pairs_per_group=2", "anchors_per_batch=2", "steps=6", "warmup=1", "log_every=1", "lr=0.002",
             "checkpoint_every=100", "device=\"cpu\"", "deterministic=true", "loss.learn_tau=true"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TrainConfig.load(CONFIG_DIR / "default-grouped.json", items).to_dict()))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    self_reg = ["loss.self_reg=2.0", "loss.self_reg_features=\"image\""]  # each rank's own pairs against the base
    runs = {"one": ([], []), "two": (torchrun, []), "two_local": (torchrun, ["loss.local_loss=true"]),
            "one_self_reg": ([], self_reg), "two_self_reg": (torchrun, self_reg)}
    for name, (launcher, extra) in runs.items():
        command = [*launcher, "-m", "clearglass.train", "--config", str(path), f"out=\"{tmp_path / name}\"", *extra]
        if not launcher:
            command = [sys.executable, *command]
        done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        errors = [ln for ln in done.stderr.splitlines() if "clearglass train: error" in ln]  # a rank's own line
        assert done.returncode == 0, f"{name}: {errors} {done.stderr[-3000:]}"
    single = losses(tmp_path / "one")
    assert len(single) == 6 and single[-1] != single[0]  # the model moved, so later steps test the gradients too
    assert losses(tmp_path / "two") == pytest.approx(single, rel=1e-4, abs=1e-5)
    assert losses(tmp_path / "two_local") == pytest.approx(single, rel=1e-4, abs=1e-5)
    assert losses(tmp_path / "two_self_reg") == pytest.approx(losses(tmp_path / "one_self_reg"), rel=1e-4, abs=1e-5)
    assert losses(tmp_path / "one_self_reg")[1:] != pytest.approx(single[1:], rel=1e-4, abs=1e-5)  # the term acts
