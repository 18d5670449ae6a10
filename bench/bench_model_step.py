"""Training-step time of the built-in models: batch 64 at 64 px, text tower frozen vs trainable, side by side;
"trimmed" runs the frozen step on tokens cut to the batch's longest caption (``trim_padding``); "cached" encodes
text with ``FrozenTextCache`` (train config ``cache_text_features``) once every caption is cached, as in later
epochs (its first, uncached step is the untimed warm-up; models without a Hugging Face text tower skip it).

Usage: python bench/bench_model_step.py [--models clearglass:scratch clearglass:clearglass-vit] [--steps 5] [--batch 64]
Prints ``name: value`` lines: wall seconds per step (median of the timed steps after one warm-up step) and process
CPU seconds per step (all threads; less sensitive to other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch

from clearglass.errors import ClearglassError
from clearglass.models import FrozenTextCache, frozen_modules_to_eval, load_model, lock_towers, trim_padding


def step_time(spec: str, lock_text: bool, steps: int, batch: int, trim: bool = False,
              cache: bool = False) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) of one forward + backward + AdamW step of the CLIP loss on random
    images and real captions."""
    bundle = load_model(spec)
    lock_towers(bundle, lock_text=lock_text)
    encode_text = FrozenTextCache(bundle) if cache else bundle.model.encode_text
    model = bundle.model.train()
    frozen_modules_to_eval(model)  # as training runs them
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = open_clip.ClipLoss()
    size = bundle.preprocess_val.transforms[0].size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch, 3, size, size)  # (B, 3, H, W)
    tokens = bundle.tokenizer([f"a photo of object number {i} on a table" for i in range(batch)])  # (B, L)
    tokens = trim_padding(bundle, tokens) if trim else tokens
    times, cpu_times = [], []
    for _ in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        text = torch.nn.functional.normalize(encode_text(tokens), dim=-1)
        loss = loss_fn(model.encode_image(images, normalize=True), text, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times[1:]), statistics.median(cpu_times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["clearglass:scratch", "clearglass:clearglass-vit"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"torch_threads: {torch.get_num_threads()}")
    for spec in args.models:
        frozen, frozen_cpu = step_time(spec, True, args.steps, args.batch)
        trimmed, trimmed_cpu = step_time(spec, True, args.steps, args.batch, trim=True)
        trainable, trainable_cpu = step_time(spec, False, args.steps, args.batch)
        try:
            cached, cached_cpu = step_time(spec, True, args.steps, args.batch, cache=True)
        except ClearglassError as error:
            print(f"{spec} text_frozen_cached: skipped ({error})")
            cached = None
        print(f"{spec} step_s text_frozen: {frozen:.3f}")
        print(f"{spec} step_s text_frozen_trimmed: {trimmed:.3f}")
        print(f"{spec} step_s text_trainable: {trainable:.3f}")
        print(f"{spec} cpu_s text_frozen: {frozen_cpu:.3f}")
        print(f"{spec} cpu_s text_frozen_trimmed: {trimmed_cpu:.3f}")
        print(f"{spec} cpu_s text_trainable: {trainable_cpu:.3f}")
        print(f"{spec} ratio trainable/frozen: {trainable / frozen:.2f}")
        if cached is not None:
            print(f"{spec} step_s text_frozen_cached: {cached:.3f}")
            print(f"{spec} cpu_s text_frozen_cached: {cached_cpu:.3f}")
            print(f"{spec} ratio frozen_trimmed/frozen_cached: {trimmed / cached:.2f}")


if __name__ == "__main__":
    main()
