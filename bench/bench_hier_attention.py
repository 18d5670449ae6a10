"""Forward + backward time of the hierarchy-aware vision transformer relative to open_clip's plain Transformer.

Sizes default to the ViT tower of configs/models/clearglass-vit.json (the default model's vision tower is a
ResNet, which has no attention blocks to replace): (image_size / patch_size)^2 patches + CLS, its width, layers and
width / head_width heads, batch 64. One CPU thread; median over the timed repeats after one warm-up.

Usage: python bench/bench_hier_attention.py [--config clearglass-vit] [--batch 64] [--repeats 5]
Prints ``name: value`` lines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from open_clip.transformer import Transformer

from clearglass.hierarchy_attention import HierarchyAwareTransformer
from clearglass.models import read_model_config


def step_seconds(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward of sum(model(x)^2) per model, the models interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats + 1):
        for name, model in models.items():
            start = time.perf_counter()
            model(x).square().sum().backward()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="clearglass-vit")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vision = read_model_config(args.config)["vision_cfg"]
    grid = vision["image_size"] // vision["patch_size"]
    width, layers, heads = vision["width"], vision["layers"], vision["width"] // vision["head_width"]
    plain = Transformer(width, layers, heads)
    x = torch.randn(args.batch, 1 + grid * grid, width)  # (B, CLS + patches, D)
    print(f"config: {args.config}")
    print(f"tokens: {1 + grid * grid}")
    print(f"width: {width}")
    print(f"layers: {layers}")
    print(f"heads: {heads}")
    print(f"batch: {args.batch}")
    models = {"plain": plain}
    for name, renormalize in (("hier", False), ("hier_renormalized", True)):
        models[name] = HierarchyAwareTransformer(width, layers, heads, grid_size=(grid, grid), renormalize=renormalize)
        models[name].load_state_dict(plain.state_dict(), strict=False)
    seconds = step_seconds(models, x, args.repeats)
    for name, s in seconds.items():
        print(f"{name}_fwd_bwd_s: {s:.4f}")
    for name in ("hier", "hier_renormalized"):
        print(f"{name}_over_plain: {seconds[name] / seconds['plain']:.2f}")


if __name__ == "__main__":
    main()
