"""Forward + backward time of the vectorised grouped loss against its loop oracle and open_clip's ClipLoss.

One batch of M groups x N pairs of D-dim features (default 8 x 10 x 512 = an 80 x 512 batch), loss
pairwise outer + scaled_pairwise inner. Compared side by side in one run, one CPU thread, median of the
timed repeats after one warm-up round, the contenders interleaved in each round. Times are the thread's CPU
time (time.thread_time), not wall time: on a shared, oversubscribed machine wall-clock medians of a few-ms step
flip with the scheduler's time slices, CPU time does not.
- grouped: clearglass GroupedContrastiveLoss (normalises inside, float32); grouped_outer_only: inner=None;
- oracle: the loop oracle of clearglass_testing/loss_oracles.py (float64, Python loops);
- clip_loss: open_clip ClipLoss on the same 80 x 512 features, including the F.normalize the model would
  apply (clip_loss_prenormalised: without it).

Usage: python bench/bench_losses.py [--groups 8] [--pairs 10] [--dim 512] [--repeats 30] [--oracle-repeats 3]
Prints ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from clearglass.losses import GroupedContrastiveLoss

from clearglass_testing.loss_oracles import oracle_terms


def median_seconds(steps: dict[str, Callable[[], torch.Tensor]], inputs: list[torch.Tensor],
                   repeats: dict[str, int]) -> dict[str, float]:
    """Median CPU seconds of loss = step(); grad(loss, inputs) per step, interleaved, after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(max(repeats.values()) + 1):
        for name, step in steps.items():
            if round_ > repeats[name]:
                continue
            start = time.thread_time()
            torch.autograd.grad(step(), inputs)
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--oracle-repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
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


if __name__ == "__main__":
    main()
