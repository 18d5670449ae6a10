"""Clean interrupts: SIGINT or SIGTERM during `clearglass train` writes a checkpoint at the last completed step, prints
one line saying where and how to resume, exits 130, and the resumed run ends with the uninterrupted run's weights;
orphan temporary files of a killed write are removed when a run starts."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clearglass.train import TrainConfig, train
from tiny_magic import tiny_train_config, write_tiny_magic, write_tiny_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 60

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("magic")
    write_tiny_model(root / "tiny-model.pt")
    return write_tiny_magic(root, concepts=6, images_per_concept=3)


def tiny_config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    """The shared tiny config, long enough to interrupt, with no periodic checkpoint."""
    return tiny_train_config(dataset, out, **{"steps": STEPS, "checkpoint_every": 1000, **overrides})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_until_rows(command: list[str], metrics: Path, rows: int) -> subprocess.Popen:
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= rows):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.01)
    return proc


def message_lines(stderr: str) -> list[str]:
    """stderr without the progress bar's redraws (tqdm writes them with carriage returns)."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not line.startswith("train:")]


def interrupt(dataset: Path, out: Path, sig: signal.Signals) -> str:
    """Start `clearglass train` on tiny data, send ``sig`` after 3 steps; check the exit code, the one line, the
    checkpoint; returns the resume command the line gives."""
    config = out.parent / "config.json"
    config.write_text(json.dumps(tiny_config(dataset, out).to_dict()))
    proc = run_until_rows([sys.executable, "-m", "clearglass", "train", "--config", str(config)],
                          out / "metrics.jsonl", rows=3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    [line] = message_lines(stderr)  # one line, on its own (not glued to the progress bar), no traceback
    found = re.fullmatch(r"clearglass train: interrupted at step (\d+): checkpoint (\S+); resume with: (.+)", line)
    assert found, line
    step, checkpoint, resume = int(found[1]), Path(found[2]), found[3]
    assert 3 <= step < STEPS and checkpoint == out / "checkpoints" / f"step_{step:06d}.pt" and checkpoint.is_file()
    assert json.loads((out / "latest.json").read_text())["step"] == step
    assert len((out / "metrics.jsonl").read_text().splitlines()) == step  # every completed step, nothing past it
    assert resume == f"clearglass train --config {out / 'config.json'} --resume auto"
    return resume


def test_sigterm_checkpoints_and_says_how_to_resume(dataset, tmp_path):
    interrupt(dataset, tmp_path / "run", signal.SIGTERM)


def test_sigint_checkpoints_and_resume_auto_matches_an_uninterrupted_run(dataset, tmp_path):
    out = tmp_path / "run"
    resume = interrupt(dataset, out, signal.SIGINT)
    args = shlex.split(resume)[1:]  # the printed command, run as `python -m clearglass`
    done = subprocess.run([sys.executable, "-m", "clearglass", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ([json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
            == list(range(1, STEPS + 1)))
    full = train(tiny_config(dataset, tmp_path / "full"))
    resumed, reference = weights(out / "checkpoints" / f"step_{STEPS:06d}.pt"), weights(Path(full["checkpoint"]))
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key


def test_orphan_temporary_files_are_removed_when_a_run_starts(dataset, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    orphans = [out / ".x.tmp", out / ".metrics.jsonl.k2j3.tmp", out / "checkpoints" / ".step_000002.pt.a1b2.tmp"]
    for path in orphans:
        path.write_bytes(b"half-written")
    (out / "notes.tmp").write_text("the user's own file: not an orphan of ours")
    result = train(tiny_config(dataset, out, steps=2), resume="auto")
    assert result["step"] == 2 and not any(p.exists() for p in orphans)
    assert (out / "notes.tmp").exists()
    assert not list(out.rglob("*.tmp"))[1:]  # only notes.tmp is left

