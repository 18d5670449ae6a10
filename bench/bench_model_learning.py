"""How fast each built-in vision tower learns from scratch: CLIP loss on synthetic coloured shapes, text frozen.

Usage: python bench/bench_model_learning.py [--models clearglass:scratch clearglass:clearglass-vit]
       [--steps 60] [--batch 32]
Prints ``name: value`` lines: zero-shot accuracy over the 12 "a {colour} {shape}" captions on held-out images
after the same number of steps, and seconds per step, for each model side by side.
"""

from __future__ import annotations

import argparse
import random
import time

import open_clip
import torch
from PIL import Image, ImageDraw

from clearglass.models import load_model, lock_towers

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square", "triangle")
CLASSES = [(c, s) for c in COLOURS for s in SHAPES]


def draw(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One 96 px image of a coloured shape at a random place and size on a random grey background."""
    grey = rng.randint(90, 200)
    image = Image.new("RGB", (96, 96), (grey, grey, grey))
    r = rng.randint(14, 30)
    cx, cy = rng.randint(r, 96 - r), rng.randint(r, 96 - r)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[colour])
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return image


def run(spec: str, steps: int, batch: int, seed: int) -> tuple[float, float]:
    """(held-out zero-shot accuracy, seconds per step) after ``steps`` AdamW steps with the text tower frozen."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    bundle = load_model(spec)
    lock_towers(bundle, lock_text=True)
    model = bundle.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    loss_fn = open_clip.ClipLoss()
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        picks = rng.sample(range(len(CLASSES)), len(CLASSES)) * (batch // len(CLASSES) + 1)
        picks = picks[:batch]
        images = torch.stack([bundle.preprocess_train(draw(*CLASSES[k], rng)) for k in picks])  # (B, 3, H, W)
        tokens = bundle.tokenizer([f"a {c} {s}" for c, s in (CLASSES[k] for k in picks)])  # (B, L)
        loss = loss_fn(model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True),
                       model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - start) / steps
    model.eval()
    test_rng = random.Random(seed + 1)
    labels = [k for k in range(len(CLASSES)) for _ in range(10)]
    with torch.no_grad():
        images = torch.stack([bundle.preprocess_val(draw(*CLASSES[k], test_rng)) for k in labels])
        texts = model.encode_text(bundle.tokenizer([f"a {c} {s}" for c, s in CLASSES]), normalize=True)  # (12, D)
        predicted = (model.encode_image(images, normalize=True) @ texts.T).argmax(dim=1)  # (120,)
    return (predicted == torch.tensor(labels)).float().mean().item(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["clearglass:scratch", "clearglass:clearglass-vit"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for spec in args.models:
        accuracy, seconds = run(spec, args.steps, args.batch, args.seed)
        print(f"{spec} zero_shot_accuracy_after_{args.steps}_steps: {accuracy:.3f}")
        print(f"{spec} step_s: {seconds:.3f}")


if __name__ == "__main__":
    main()
