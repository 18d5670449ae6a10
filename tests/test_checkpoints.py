"""Checkpoints as untrusted files: a planted ``__reduce__`` payload in the weights or the resume state is refused
with one line and never runs; truncated files, another architecture's weights and a corrupt pointer are errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from clearglass.checkpoints import (
    extra_state_path,
    load_extra_state,
    load_weights,
    metadata_path,
    read_checkpoint_metadata,
    save_checkpoint,
)
from clearglass.errors import ClearglassError
from clearglass.models import ModelBundle, ModelSource, load_model, register_open_clip_config
from clearglass.train.state import latest_checkpoint
from tiny_magic import TINY_MODEL_CONFIG


class Payload:
    """Unpickling this creates MARKER: what a crafted checkpoint would do under ``torch.load(weights_only=False)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_bundle(config: dict = TINY_MODEL_CONFIG, name: str = "clearglass-test-tiny") -> ModelBundle:
    register_open_clip_config(name, config)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    return ModelBundle(model, open_clip.get_tokenizer(name), None, None, name,
                       ModelSource("open_clip", name, config))


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    """A full tiny checkpoint with a plain-data resume state, as a run writes it."""
    extra = {"step": 3, "optimizer": {"state": {}, "param_groups": []}, "rng": [{"torch": torch.get_rng_state()}]}
    return save_checkpoint(tiny_bundle(), tmp_path / "ckpt" / "step_000003.pt", train_config={}, dataset_sha256="d",
                           metrics={}, extra_state=extra)


def one_line_error(call, *args) -> str:
    with pytest.raises(ClearglassError) as e:
        call(*args)
    message = str(e.value)
    assert "\n" not in message, message
    return message


def test_a_clean_checkpoint_round_trips(checkpoint):
    model = tiny_bundle().model
    load_weights(model, checkpoint, read_checkpoint_metadata(checkpoint))
    assert load_extra_state(checkpoint)["step"] == 3
    assert load_model(str(checkpoint)).config == TINY_MODEL_CONFIG


@pytest.mark.parametrize("planted", ["weights", "resume state"])
def test_a_planted_payload_is_refused_in_one_line_and_never_runs(checkpoint, tmp_path, planted):
    marker = tmp_path / "PAYLOAD-RAN"
    target = checkpoint if planted == "weights" else extra_state_path(checkpoint)
    state = torch.load(target, weights_only=True)
    state["evil"] = Payload(marker)
    torch.save(state, target)
    refused = f"{target}: {'checkpoint weights' if planted == 'weights' else 'resume state'} holds objects that " \
              "only arbitrary code can rebuild; refused"
    if planted == "weights":
        assert one_line_error(load_model, str(checkpoint)).startswith(refused)  # what eval and resume load
        assert one_line_error(load_weights, tiny_bundle().model, checkpoint).startswith(refused)
    else:
        assert one_line_error(load_extra_state, checkpoint).startswith(refused)
    assert not marker.exists()


@pytest.mark.parametrize("cut", ["weights", "resume state"])
def test_truncated_files_are_named(checkpoint, cut):
    target = checkpoint if cut == "weights" else extra_state_path(checkpoint)
    data = target.read_bytes()
    target.write_bytes(data[:len(data) // 3])
    what = "checkpoint weights" if cut == "weights" else "resume state"
    call = (lambda: load_model(str(checkpoint))) if cut == "weights" else (lambda: load_extra_state(checkpoint))
    assert one_line_error(call).startswith(f"{target}: {what} is truncated or corrupt (")


def test_weights_of_another_architecture_do_not_load(checkpoint):
    wider = json.loads(json.dumps(TINY_MODEL_CONFIG))
    wider["vision_cfg"]["width"] = 48
    model = tiny_bundle(wider, "clearglass-test-tiny-wider").model
    message = one_line_error(load_weights, model, checkpoint, read_checkpoint_metadata(checkpoint))
    assert message.startswith(f"checkpoint {checkpoint}: cannot load its weights into CLIP: size mismatch for ")
    name = message.removeprefix(f"checkpoint {checkpoint}: cannot load its weights into CLIP: size mismatch for ")
    assert name.split(":")[0] in model.state_dict(), message  # the tensor is named, not cut off
    fewer = dict(torch.load(checkpoint, weights_only=True))
    fewer.pop("logit_scale")
    torch.save(fewer, checkpoint)
    assert "missing ['logit_scale'] (1)" in one_line_error(load_weights, tiny_bundle().model, checkpoint)


def test_a_full_disk_leaves_no_checkpoint_file_without_the_others(tmp_path, monkeypatch):
    import errno

    import clearglass.checkpoints

    def full(obj):
        def write(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write

    monkeypatch.setattr(clearglass.checkpoints, "json_writer", full)  # the last of the three files fails
    path = tmp_path / "ckpt" / "step_000001.pt"
    message = one_line_error(lambda: save_checkpoint(tiny_bundle(), path, train_config={}, dataset_sha256="d",
                                                     metrics={}, extra_state={"step": 1}))
    assert message == f"{metadata_path(path)}: cannot write (No space left on device)"
    assert sorted(p.name for p in path.parent.iterdir()) == []  # no .pt without its .json, no temporary file


def test_an_extra_state_name_that_leaves_the_folder_is_refused(checkpoint):
    meta = json.loads(metadata_path(checkpoint).read_text())
    for name in ("../../..", "..", "/etc/passwd", "sub/x.pt", 3):
        metadata_path(checkpoint).write_text(json.dumps(meta | {"extra_state": name}))
        assert f"extra_state {name!r}: expected the file name" in one_line_error(load_extra_state, checkpoint)


def test_metadata_problems_are_named(checkpoint):
    meta = metadata_path(checkpoint)
    meta.write_text("{not json")
    assert one_line_error(read_checkpoint_metadata, checkpoint).startswith(f"{meta}: checkpoint metadata is not valid")
    meta.write_text(json.dumps({"format": "clearglass-checkpoint/1", "kind": "open_clip", "architecture": "x",
                                "model_config": {}, "extra_state": extra_state_path(checkpoint).name}))
    assert "pickled Python objects, which are not loaded" in one_line_error(load_extra_state, checkpoint)
    meta.unlink()
    assert one_line_error(load_model, str(checkpoint)) == f"checkpoint {checkpoint}: metadata {meta} not found"


def test_a_corrupt_latest_pointer_is_named(tmp_path, checkpoint):
    out = tmp_path / "run"
    out.mkdir()
    assert latest_checkpoint(out) is None
    for text, message in [("{oops", "latest-checkpoint pointer is not valid JSON"),
                          ("[]", "expected a JSON object (latest-checkpoint pointer), got list"),
                          ('{"step": 3}', 'expected {"checkpoint": "checkpoints/step_N.pt", ...}')]:
        (out / "latest.json").write_text(text)
        assert one_line_error(latest_checkpoint, out).startswith(f"{out / 'latest.json'}: {message}")
    shutil.copytree(checkpoint.parent, out / "checkpoints")
    (out / "latest.json").write_text(json.dumps({"checkpoint": "checkpoints/step_000003.pt"}))
    assert latest_checkpoint(out) == out / "checkpoints" / "step_000003.pt"


# ----------------------------------------------------------------------------------------------------------------
# slim checkpoints


@pytest.fixture(scope="module")
def trained_default() -> ModelBundle:
    """The default model as training leaves it: MiniLM frozen, image tower and projection trained."""
    from clearglass.models import lock_towers

    bundle = load_model("clearglass:scratch")
    lock_towers(bundle, lock_text=True)
    with torch.no_grad():
        bundle.model.visual.attnpool.c_proj.weight.add_(0.25)
        bundle.model.text.proj.weight.mul_(1.5)
    return bundle


def _outputs(bundle: ModelBundle) -> tuple[torch.Tensor, torch.Tensor]:
    bundle.model.eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bundle.model.encode_image(images), bundle.model.encode_text(bundle.tokenizer(["a cat", "two dogs"]))


def test_a_slim_default_checkpoint_holds_no_frozen_minilm_and_rebuilds_exactly(trained_default, tmp_path):
    before = _outputs(trained_default)
    path = save_checkpoint(trained_default, tmp_path / "slim.pt", train_config={}, dataset_sha256="", metrics={})
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("text.transformer.") for k in state) and "text.proj.weight" in state
    assert path.stat().st_size <= 25_000_000
    meta = read_checkpoint_metadata(path)
    assert meta["base"] == "clearglass:scratch" and meta["omitted"]["keys"] > 100
    after = _outputs(load_model(str(path)))
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    full = save_checkpoint(trained_default, tmp_path / "full.pt", train_config={}, dataset_sha256="", metrics={},
                           save_frozen=True)
    assert full.stat().st_size > 4 * path.stat().st_size and read_checkpoint_metadata(full)["base"] is None
    for a, b in zip(before, _outputs(load_model(str(full)))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = open_clip.create_model(register_open_clip_config(meta["architecture"], meta["model_config"]),
                                   pretrained=str(full)).eval()  # a full file is a plain open_clip state dict
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(torch.randn(2, 3, 64, 64, generator=torch.Generator()
                                                                  .manual_seed(0))), before[0], rtol=0, atol=0)


def test_a_slim_checkpoint_refuses_a_base_that_changed(trained_default, tmp_path, monkeypatch):
    path = save_checkpoint(trained_default, tmp_path / "slim.pt", train_config={}, dataset_sha256="", metrics={})
    meta = read_checkpoint_metadata(path)
    meta["omitted"]["sha256"] = "0" * 64  # what another MiniLM package version would give
    metadata_path(path).write_text(json.dumps(meta))
    with pytest.raises(ClearglassError, match="no longer gives the .* frozen tensors"):
        load_model(str(path))


def test_a_format_1_checkpoint_still_loads_but_does_not_resume(trained_default, tmp_path):
    """Checkpoints written before slim checkpoints: full weights, format 1 metadata, a pickled resume state."""
    path = tmp_path / "old.pt"
    source = trained_default.source
    torch.save({k: v.detach().cpu() for k, v in trained_default.model.state_dict().items()}, path)
    torch.save({"scheduler": {"lr_lambdas": [{"config": object.__new__(ModelSource)}]}}, extra_state_path(path))
    metadata_path(path).write_text(json.dumps({
        "format": "clearglass-checkpoint/1", "kind": source.kind, "architecture": source.architecture,
        "spec": "default", "weights": path.name, "extra_state": extra_state_path(path).name,
        "model_config": source.config, "train_config": {}, "data_hash": "abc", "metrics": {}}))
    for a, b in zip(_outputs(trained_default), _outputs(load_model(str(path)))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ClearglassError, match="written by clearglass 0.1 as pickled Python objects"):
        load_extra_state(path)
