"""A tiny MAGIC dataset with real PNG images, for the data and training tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from clearglass.magic.schema import ConceptRecord, ImageRecord, save_concepts

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (220, 220, 20), (200, 30, 200), (20, 200, 200),
           (120, 60, 0), (250, 140, 0), (90, 90, 90), (255, 255, 255)]


def write_tiny_magic(root: Path, concepts: int = 8, images_per_concept: int = 4, held_out: int = 1,
                     size: int = 32) -> Path:
    """Write ``root/magic.json`` and PNGs under ``root/images``; concept k's hard negatives are k-1 and k+1."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"concept{k}" for k in range(concepts + held_out)]
    records = []
    for k, name in enumerate(names):
        train = []
        if k < concepts:
            for j in range(images_per_concept):
                rel = f"images/{name}_{j}.png"
                colour = COLOURS[k % len(COLOURS)]
                noise = np.random.default_rng([k, j]).integers(0, 60, (size, size, 3))
                pixels = (np.array(colour) * 0.75 + noise).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(root / rel)
                train.append(ImageRecord(
                    image=rel,
                    old_captions=[f"a photo of thing {k} number {j}", f"thing {k} seen from afar {j}"],
                    new_captions=[f"an example of idea {k}", f"something showing idea {k} variant {j}"],
                    level1=name, level2=f"family{k // 2}", level3="kind", level4=None,
                ))
        negatives = [names[i] for i in (k - 1, k + 1) if 0 <= i < len(names)]
        records.append(ConceptRecord(concept=name, hard_negative=negatives, train_images=train))
    path = root / "magic.json"
    save_concepts(records, path)
    return path


TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A checkpoint (``save_checkpoint`` layout) of a tiny open_clip ViT + text transformer: a model spec for tests."""
    import open_clip
    import torch

    from clearglass.checkpoints import save_checkpoint
    from clearglass.models import ModelBundle, ModelSource, register_open_clip_config

    name = register_open_clip_config("clearglass-test-tiny", TINY_MODEL_CONFIG)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    transforms = [open_clip.image_transform(32, is_train) for is_train in (True, False)]
    bundle = ModelBundle(model, open_clip.get_tokenizer(name), *transforms, name,
                         ModelSource("open_clip", name, TINY_MODEL_CONFIG))
    return save_checkpoint(bundle, path, train_config={}, dataset_sha256="", metrics={})


def tiny_train_config(dataset: Path, out: Path, **overrides: object):
    """The default grouped config on tiny data and the tiny model beside it (``write_tiny_model(dataset.parent /
    "tiny-model.pt")``): 4 groups x 2 pairs, 4 steps, a row per step, deterministic on the CPU."""
    import json

    from clearglass.train import CONFIG_DIR, TrainConfig

    items = {"data": str(dataset), "out": str(out), "model": str(dataset.parent / "tiny-model.pt"),
             "groups_per_batch": 4, "pairs_per_group": 2, "steps": 4, "warmup": 1, "log_every": 1,
             "checkpoint_every": 100, "device": "cpu", "deterministic": True, "lr": 0.001, **overrides}
    return TrainConfig.load(CONFIG_DIR / "default-grouped.json", [f"{k}={json.dumps(v)}" for k, v in items.items()])


def hold_run_lock(out: Path) -> subprocess.Popen:
    """A process holding the run lock of ``out`` (as a running train would), once it says so; the caller kills it."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from clearglass.train.run import run_lock\n"
                               "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "held":
        holder.kill()
        raise RuntimeError(f"the lock holder did not take {out / 'train.lock'}: {holder.wait()}")
    return holder
