"""bench/bench_gpu.py --tiny on the CPU: every figure is printed and parses, the JSON holds the same figures, the
SIGKILLed-and-resumed run ends with the uninterrupted run's weights, and each target reads met or missed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TEXT = {"mode", "date", "device", "torch", "open_clip", "memory_measure", "model", "precision", "resume_weights"}
COUNTS = {"data_concepts", "data_images", "data_image_px", "batch_groups", "batch_pairs", "loader_num_workers",
          "loss_pairs", "loss_dim", "resume_killed_at_step", "resume_steps_logged_at_kill"}
FLAGS = {"loader_pinned"}
NUMBERS = {"step_grouped_ms", "step_clip_ms", "step_ratio_grouped_over_clip", "step_grouped_peak_mib",
           "step_clip_peak_mib", "loader_batches_per_s", "model_steps_per_s", "loader_over_model", "loss_grouped_ms",
           "loss_clip_ms", "loss_time_ratio", "loss_grouped_peak_mib", "loss_clip_peak_mib", "loss_memory_ratio",
           "hier_vit_ms", "hier_vit_hier_ms", "hier_ratio", "resume_max_abs_diff", "resume_relative_diff",
           "resume_rerun_relative_diff", "resume_tolerance"}
TARGETS = {"target_grouped_step", "target_loss_time", "target_loss_memory", "target_loader", "target_resume"}
ON_CUDA_ONLY = {"loss_host_syncs"}  # "n/a" on a CPU


def parse(name: str, value: str) -> object:
    """A printed value as its kind, or an AssertionError naming the line."""
    if name in COUNTS:
        return int(value)
    if name in FLAGS:
        assert value in ("true", "false"), (name, value)
        return value == "true"
    if name in NUMBERS:
        return float(value)
    if name in TARGETS:
        assert value in ("met", "missed"), (name, value)
    return value


def test_tiny_run_prints_every_figure_and_the_resumed_weights_are_equal(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "bench/bench_gpu.py", "--tiny", "--device", "cpu", "--json", str(out)],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split(": ", 1) for line in done.stdout.splitlines()]
    assert all(len(parts) == 2 for parts in lines), done.stdout
    printed = {name: parse(name, value) for name, value in lines}
    assert len(printed) == len(lines)  # no name twice
    assert set(printed) == TEXT | COUNTS | FLAGS | NUMBERS | TARGETS | ON_CUDA_ONLY
    assert printed["loss_host_syncs"] == "n/a" and printed["device"] == "cpu" and printed["mode"] == "tiny"
    assert printed["memory_measure"] == "cpu_peak_rss" and printed["loader_pinned"] is False
    assert (printed["batch_groups"], printed["batch_pairs"], printed["loss_pairs"]) == (4, 2, 32)
    assert all(printed[name] > 0 for name in ("step_grouped_ms", "step_clip_ms", "loader_batches_per_s",
                                               "loss_grouped_ms", "loss_clip_ms", "hier_vit_ms", "hier_vit_hier_ms"))
    assert printed["resume_killed_at_step"] == 10 and 10 <= printed["resume_steps_logged_at_kill"] < 20
    assert printed["resume_weights"] == "equal" and printed["target_resume"] == "met"
    assert printed["resume_max_abs_diff"] == printed["resume_relative_diff"] == 0.0
    assert printed["resume_rerun_relative_diff"] == 0.0 and printed["resume_tolerance"] == 0.0
    saved = json.loads(out.read_text())
    assert saved.keys() == printed.keys()
    for name, value in saved.items():
        if isinstance(value, float) and not math.isnan(value):
            assert math.isclose(value, printed[name], rel_tol=1e-3), name  # printed to 4 significant digits
        elif not isinstance(value, float):
            assert value == printed[name], name
