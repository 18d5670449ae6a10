"""Forward + backward time of the vectorised grouped loss against its loop oracle and open_clip's ClipLoss.

Default: one batch of M groups x N pairs of D-dim features (8 x 10 x 512 = an 80 x 512 batch), loss
pairwise outer + scaled_pairwise inner. Compared side by side in one run, one CPU thread, median of the
timed repeats after one warm-up round, the contenders interleaved in each round. Times are the thread's CPU
time (time.thread_time), not wall time: on a shared, oversubscribed machine wall-clock medians of a few-ms step
flip with the scheduler's time slices, CPU time does not.
- grouped: clearglass GroupedContrastiveLoss (normalises inside, float32); grouped_outer_only: inner=None;
- oracle: the loop oracle of clearglass_testing/loss_oracles.py (float64, Python loops);
- clip_loss: open_clip ClipLoss on the same 80 x 512 features, including the F.normalize the model would
  apply (clip_loss_prenormalised: without it).

--sizes MxN ...: the batch sizes people train with. Each contender at each size runs in a fresh process (one thread,
random (M, N, D) float32 features), so its peak memory is its own: peak_mib is the process's peak resident set
(getrusage ru_maxrss) minus that peak after imports and input creation. Time: median thread CPU seconds of the
forward + backward over min(--repeats, 2^28 / B^2) rounds after one warm-up round (a single round, no warm-up, where
that is 1: from 2048x8 up). Contenders: grouped
(the default loss), grouped_outer_only, grouped_autograd (the same forward math with autograd's backward,
clearglass_testing.loss_oracles.autograd_grouped_loss: does the hand-written backward earn its lines?) and
clip_loss. A size whose two (B, B) float32 logit matrices exceed half the machine's memory runs the grouped loss
with chunk=--chunk (tiled) and skips ClipLoss and the autograd twin, saying why, then checks the tiled loss against
the untiled one on its first --check-groups groups.

Usage: python bench/bench_losses.py [--groups 8] [--pairs 10] [--dim 512] [--repeats 30] [--oracle-repeats 3]
       python bench/bench_losses.py --sizes 32x8 256x8 512x8 2048x8 8192x8 [--dim 512] [--chunk 64]
Prints ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from clearglass.losses import GroupedContrastiveLoss
from clearglass_testing.loss_oracles import autograd_grouped_loss, oracle_terms

CONTENDERS = ("grouped", "grouped_outer_only", "grouped_autograd", "clip_loss")


def median_seconds(steps: dict[str, Callable[[], torch.Tensor]], inputs: list[torch.Tensor],
                   repeats: dict[str, int], warmup: bool = True) -> dict[str, float]:
    """Median CPU seconds of loss = step(); grad(loss, inputs) per step, interleaved, after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(max(repeats.values()) + warmup):
        for name, step in steps.items():
            if round_ >= repeats[name] + warmup:
                continue
            start = time.thread_time()
            torch.autograd.grad(step(), inputs)
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(t[warmup:]) for name, t in times.items()}


def default_run(args: argparse.Namespace) -> None:
    """The 80-pair comparison: grouped, outer only, oracle and ClipLoss interleaved in this process."""
    m, n, d = args.groups, args.pairs, args.dim
    images = torch.randn(m, n, d, requires_grad=True)  # (M groups, N pairs, D)
    texts = torch.randn(m, n, d, requires_grad=True)
    grouped = GroupedContrastiveLoss(outer="pairwise", inner="scaled_pairwise", tau=0.1, tau_inner=0.07)
    outer_only = GroupedContrastiveLoss(outer="pairwise", inner=None, tau=0.1)
    clip = ClipLoss()
    scale = torch.tensor(10.0)
    steps = {
        "grouped": lambda: grouped(images, texts)["loss"],
        "grouped_outer_only": lambda: outer_only(images, texts)["loss"],
        "oracle": lambda: oracle_terms(images, texts, "pairwise", "scaled_pairwise", tau=0.1, tau_inner=0.07)["loss"],
        "clip_loss": lambda: clip(F.normalize(images.reshape(m * n, d), dim=-1),
                                  F.normalize(texts.reshape(m * n, d), dim=-1), scale),
        "clip_loss_prenormalised": lambda: clip(images.reshape(m * n, d), texts.reshape(m * n, d), scale),
    }
    repeats = {name: args.repeats for name in steps} | {"oracle": args.oracle_repeats}
    seconds = median_seconds(steps, [images, texts], repeats)
    print(f"batch: {m}x{n}x{d}")
    print("threads: 1")
    for name, value in seconds.items():
        print(f"{name}_fwd_bwd_ms: {1000 * value:.3f}")
    print(f"speedup_grouped_vs_oracle: {seconds['oracle'] / seconds['grouped']:.1f}")
    print(f"ratio_grouped_vs_clip_loss: {seconds['grouped'] / seconds['clip_loss']:.2f}")
    print(f"ratio_outer_only_vs_clip_loss: {seconds['grouped_outer_only'] / seconds['clip_loss']:.2f}")
    print(f"ratio_grouped_vs_clip_loss_prenormalised: {seconds['grouped'] / seconds['clip_loss_prenormalised']:.2f}")


def contender_step(name: str, images: torch.Tensor, texts: torch.Tensor,
                   chunk: int | None) -> Callable[[], torch.Tensor]:
    """The loss of one contender on (M, N, D) features, as a step for median_seconds."""
    m, n, d = images.shape
    if name == "grouped_autograd":
        return lambda: autograd_grouped_loss(images, texts)
    if name == "clip_loss":
        clip, scale = ClipLoss(), torch.tensor(10.0)
        return lambda: clip(F.normalize(images.reshape(m * n, d), dim=-1), F.normalize(texts.reshape(m * n, d), dim=-1),
                            scale)
    loss_fn = GroupedContrastiveLoss(inner="scaled_pairwise" if name == "grouped" else None, chunk=chunk)
    return lambda: loss_fn(images, texts)["loss"]


def peak_mib() -> float:
    """This process's peak resident set so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, m: int, n: int, d: int, repeats: int, chunk: int | None) -> dict[str, float]:
    """Time and peak memory of one contender at one size, in this (fresh) process."""
    torch.manual_seed(0)
    images = torch.randn(m, n, d, requires_grad=True)  # (M groups, N pairs, D)
    texts = torch.randn(m, n, d, requires_grad=True)
    baseline = peak_mib()
    seconds = median_seconds({name: contender_step(name, images, texts, chunk)}, [images, texts], {name: repeats},
                             warmup=repeats > 1)[name]
    return {"seconds": seconds, "peak_mib": peak_mib() - baseline}


def exactness(m: int, n: int, d: int, chunk: int) -> dict[str, float]:
    """Largest relative differences of the tiled loss's value and gradients from the untiled loss's, float32."""
    torch.manual_seed(0)
    images = torch.randn(m, n, d, requires_grad=True)
    texts = torch.randn(m, n, d, requires_grad=True)
    results = []
    for size in (chunk, None):
        loss = GroupedContrastiveLoss(chunk=size)(images, texts)["loss"]
        results.append([loss.detach(), *torch.autograd.grad(loss, [images, texts])])
    diffs = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*results)]
    return {"loss_rel_diff": diffs[0], "grad_rel_diff": max(diffs[1:])}


def run_child(args: list[str]) -> dict[str, float]:
    """This script run with `args` in a fresh one-thread process: its last stdout line, parsed as JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_losses.py {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_gib() -> float:
    """This machine's physical memory, GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def size_run(size: str, args: argparse.Namespace) -> None:
    """Print time, peak memory and ratios of every contender at one MxN size, each in a fresh process."""
    m, n = (int(v) for v in size.split("x"))
    b, d = m * n, args.dim
    logits_gib = 2 * b * b * 4 / 2**30  # ClipLoss's two (B, B) float32 logit matrices
    tiled = logits_gib > machine_gib() / 2
    chunk = (args.chunk or 64) if tiled else None
    repeats = max(1, min(args.repeats, 2**28 // (b * b)))
    print(f"{size}_pairs: {b}")
    print(f"{size}_grouped_chunk: {chunk}")
    results = {}
    for name in CONTENDERS:
        if tiled and name in ("clip_loss", "grouped_autograd"):
            print(f"{size}_{name}_skipped: two untiled ({b}, {b}) float32 logit matrices alone are "
                  f"{logits_gib:.1f} GiB, more than half of this machine's {machine_gib():.1f} GiB")
            continue
        command = ["--measure", name, "--size", size, "--dim", str(d), "--repeats", str(repeats)]
        results[name] = run_child(command + (["--chunk", str(chunk)] if chunk else []))
        print(f"{size}_{name}_s: {results[name]['seconds']:.4f}")
        print(f"{size}_{name}_peak_mib: {results[name]['peak_mib']:.1f}")
    for name, reference in (("grouped", "clip_loss"), ("grouped_outer_only", "clip_loss"),
                            ("grouped", "grouped_autograd")):
        if reference in results:
            for key, label in (("seconds", "time"), ("peak_mib", "peak")):
                ratio = results[name][key] / max(results[reference][key], 1e-9)
                print(f"{size}_ratio_{label}_{name}_vs_{reference}: {ratio:.2f}")
    if tiled:
        check = min(m, args.check_groups)
        diffs = run_child(["--check", f"{check}x{n}", "--dim", str(d), "--chunk", str(chunk)])
        print(f"{size}_exactness_pairs: {check * n}")
        for key, value in diffs.items():
            print(f"{size}_exactness_tiled_vs_untiled_{key}: {value:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--oracle-repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", metavar="MxN", help="batch sizes, each contender in a fresh process")
    parser.add_argument("--chunk", type=int, help="groups per tile where the untiled logits do not fit (default 64)")
    parser.add_argument("--check-groups", type=int, default=512, help="groups of the tiled-vs-untiled check")
    parser.add_argument("--measure", choices=CONTENDERS, help=argparse.SUPPRESS)  # the child process of --sizes
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--check", metavar="MxN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.measure or args.check:
        m, n = (int(v) for v in (args.size or args.check).split("x"))
        result = measure(args.measure, m, n, args.dim, args.repeats, args.chunk) if args.measure \
            else exactness(m, n, args.dim, args.chunk)
        print(json.dumps(result))
    elif args.sizes:
        print(f"dim: {args.dim}")
        print("threads: 1")
        for size in args.sizes:
            size_run(size, args)
    else:
        default_run(args)


if __name__ == "__main__":
    main()
