"""WiSE-FT interpolation: w=0 is the base and w=1 the fine-tune, exactly; the middle is the formula; the CLI writes a
checkpoint that loads as a model."""

from __future__ import annotations

import pytest
import torch

from clearglass.checkpoints import read_checkpoint_metadata, save_checkpoint
from clearglass.cli import main
from clearglass.errors import ClearglassError
from clearglass.interpolate import interpolate, interpolate_state
from clearglass.models import load_model
from tiny_magic import write_tiny_model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_interpolate_state_ends_are_exact_and_the_middle_is_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(5, 3, generator=g), "count": torch.tensor(3)}
    tuned = {"w": torch.randn(5, 3, generator=g), "count": torch.tensor(9)}
    assert torch.equal(interpolate_state(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(interpolate_state(base, tuned, 1.0)["w"], tuned["w"])
    mid = interpolate_state(base, tuned, 0.25)
    for i in range(5):
        for j in range(3):
            assert float(mid["w"][i, j]) == pytest.approx(0.75 * float(base["w"][i, j])
                                                          + 0.25 * float(tuned["w"][i, j]))
    assert int(mid["count"]) == 9  # integer buffers come from the fine-tune
    with pytest.raises(ClearglassError, match="0 <= w <= 1"):
        interpolate_state(base, tuned, 1.5)
    with pytest.raises(ClearglassError, match="different tensors"):
        interpolate_state(base, {"w": tuned["w"]}, 0.5)


def test_interpolated_models_at_the_ends_equal_base_and_fine_tune(tmp_path) -> None:
    base_path = write_tiny_model(tmp_path / "base.pt", seed=0)
    tuned_path = write_tiny_model(tmp_path / "tuned.pt", seed=1)
    base, tuned = _state(load_model(str(base_path)).model), _state(load_model(str(tuned_path)).model)
    for w, expected in ((0.0, base), (1.0, tuned)):
        got = interpolate(load_model(str(base_path)), load_model(str(tuned_path)), w).model.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), w
    out = tmp_path / "mid.pt"
    assert main(["interpolate", "--base", str(base_path), "--fine-tuned", str(tuned_path), "--w", "0.5",
                 "--out", str(out)]) == 0
    loaded = load_model(str(out)).model.state_dict()
    k = next(k for k, v in base.items() if v.is_floating_point() and not torch.equal(v, tuned[k]))
    torch.testing.assert_close(loaded[k], 0.5 * base[k] + 0.5 * tuned[k], rtol=0, atol=1e-7)
    assert read_checkpoint_metadata(out)["train_config"]["wise_ft"]["w"] == 0.5


def test_a_slim_interpolation_stores_only_what_the_fine_tune_changed(tmp_path) -> None:
    base_path = write_tiny_model(tmp_path / "base.pt", seed=0)
    tuned = load_model(str(base_path))
    with torch.no_grad():
        tuned.model.visual.proj.mul_(2.0)  # the only tensor the "fine-tune" changed
    tuned_path = save_checkpoint(tuned, tmp_path / "tuned.pt", train_config={}, dataset_sha256="", metrics={},
                                 save_frozen=True)
    mixed = interpolate(load_model(str(base_path)), load_model(str(tuned_path)), 0.5)
    path = save_checkpoint(mixed, tmp_path / "mid.pt", train_config={}, dataset_sha256="", metrics={})
    assert set(torch.load(path, weights_only=True)) == {"visual.proj"}
    assert read_checkpoint_metadata(path)["base"] == str(base_path.resolve())
    torch.testing.assert_close(load_model(str(path)).model.visual.proj,
                               1.5 * load_model(str(base_path)).model.visual.proj)


def test_interpolate_checks_its_output_before_loading_anything(tmp_path, capsys) -> None:
    args = ["interpolate", "--base", "no-such-model", "--fine-tuned", "no-such.pt", "--w", "0.5", "--out"]
    assert main([*args, str(tmp_path / "mid.txt")]) == 2
    assert "expected a .pt or .pth file name" in capsys.readouterr().err
    (tmp_path / "folder.pt").mkdir()
    assert main([*args, str(tmp_path / "folder.pt")]) == 2
    assert "is a folder" in capsys.readouterr().err
