"""The library API `import clearglass` offers: its names import lazily, and the README's usage example runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

import clearglass


def test_the_exports_resolve_and_importing_clearglass_loads_no_model_code() -> None:
    from clearglass import (  # noqa: F401
        EvalConfig,
        GroupedContrastiveLoss,
        ModelBundle,
        ModelEncoder,
        encode_images,
        encode_texts,
        evaluate_model,
        load_concepts,
        load_model,
        lock_towers,
        make_loss,
        score_concepts,
    )

    assert set(clearglass.__all__) <= set(dir(clearglass)) and "score_concepts" in clearglass.__all__
    assert load_model.__module__ == "clearglass.models" and score_concepts.__module__ == "clearglass.inference"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clearglass.nope  # noqa: B018
    code = "import sys, json, clearglass; print(json.dumps([m in sys.modules for m in ('torch', 'open_clip')]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False, False]


def _pictures(folder) -> list[str]:
    """Two red discs and two blue squares."""
    paths = []
    for name, colour, shape in [("disc-a", "red", "ellipse"), ("disc-b", "firebrick", "ellipse"),
                                ("square-a", "blue", "rectangle"), ("square-b", "navy", "rectangle")]:
        image = Image.new("RGB", (64, 64), "white")
        getattr(ImageDraw.Draw(image), shape)((12, 12, 52, 52), fill=colour)
        image.save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def test_the_readme_usage_example(tmp_path, monkeypatch) -> None:
    """The README's example, as written there (only the picture files are made here)."""
    monkeypatch.chdir(tmp_path)
    _pictures(tmp_path)
    # --- README example ---
    import torch

    from clearglass import GroupedContrastiveLoss, encode_images, encode_texts, load_model, lock_towers, score_concepts

    bundle = load_model("clearglass-mini")  # eval mode; its MiniLM text transformer frozen
    images = encode_images(bundle, ["disc-a.png", "square-a.png"])  # (2, D), L2-normalised, no grad
    texts = encode_texts(bundle, ["a red disc", "a blue square", "a cat"])  # (3, D)
    print(images @ texts.T)  # (2, 3) cosine similarities
    print(score_concepts(bundle, "disc-a.png", ["circle", "square", "animal"]))  # [(concept, cosine), ...] best first

    lock_towers(bundle, lock_text=True)  # train the image tower and the projections; MiniLM stays frozen
    loss_fn = GroupedContrastiveLoss()  # CLEAR GLASS: each group is pairs that show one concept
    params = [p for p in bundle.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    files = ["disc-a.png", "disc-b.png", "square-a.png", "square-b.png"]  # 2 groups x 2 pairs
    captions = ["a red disc", "a round red shape", "a blue square", "a square in blue"]
    pixels = torch.stack([bundle.preprocess_train(Image.open(f).convert("RGB")) for f in files])
    tokens = bundle.tokenizer(captions)
    for _ in range(3):  # eval mode kept: fixed batch-norm statistics, no dropout
        image_features = bundle.model.encode_image(pixels).view(2, 2, -1)  # (M groups, N pairs, D)
        text_features = bundle.model.encode_text(tokens).view(2, 2, -1)
        loss = loss_fn(image_features, text_features)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # --- end of the README example ---
    assert images.shape == (2, 256) and texts.shape == (3, 256)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(2))
    ranked = score_concepts(bundle, "disc-a.png", ["circle", "square", "animal"])
    assert sorted(c for c, _ in ranked) == ["animal", "circle", "square"]
    assert all(a[1] >= b[1] for a, b in zip(ranked, ranked[1:]))
    assert torch.isfinite(loss) and all(p.grad is not None for p in bundle.model.visual.parameters())
    assert all(p.grad is None for p in bundle.model.text.transformer.parameters())
