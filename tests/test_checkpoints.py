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

from clearglass.checkpoints import (extra_state_path, load_extra_state, load_weights, metadata_path,
                                    read_checkpoint_metadata, save_checkpoint)
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
    model.clearglass_source = ModelSource("open_clip", name, config)
    return ModelBundle(model, open_clip.get_tokenizer(name), None, None, name, config)


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
    assert message.startswith(f"checkpoint {checkpoint}: cannot load its weights into CLIP: ")
    fewer = dict(torch.load(checkpoint, weights_only=True))
    fewer.pop("logit_scale")
    torch.save(fewer, checkpoint)
    assert "missing ['logit_scale'] (1)" in one_line_error(load_weights, tiny_bundle().model, checkpoint)


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
