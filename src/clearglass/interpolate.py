"""Weight-space interpolation between a base model and a fine-tuned one (WiSE-FT, Wortsman et al. 2022):
``theta = (1 - w) * theta_base + w * theta_fine_tuned``, so w=0 is the base and w=1 the fine-tune, exactly.

Floating-point tensors interpolate; integer buffers (batch-norm step counters) come from the fine-tune. The result
carries the base's rebuild information with the tensors both models share marked frozen, so a slim checkpoint of
it stores only what the fine-tune changed.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from clearglass.errors import ClearglassError
from clearglass.models import ModelBundle


def interpolate_state(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], w: float
                      ) -> dict[str, torch.Tensor]:
    """(1 - w) * base + w * tuned per floating tensor, tuned's value for the others; same keys and shapes."""
    if not 0.0 <= w <= 1.0:
        raise ClearglassError(f"interpolation weight w = {w}: expected 0 <= w <= 1")
    if set(base) != set(tuned):
        diff = sorted(set(base) ^ set(tuned))
        raise ClearglassError(f"interpolation: the two models have different tensors ({diff[:5]}, {len(diff)} in all): "
                              "expected a fine-tune of the base")
    out = {}
    for key, b in base.items():
        t = tuned[key]
        if b.shape != t.shape:
            raise ClearglassError(f"interpolation: {key} has shape {tuple(b.shape)} in the base and {tuple(t.shape)} "
                                  "in the fine-tune")
        out[key] = (1.0 - w) * b + w * t.to(b.dtype) if b.is_floating_point() else t.clone()
    return out


def interpolate(base: ModelBundle, tuned: ModelBundle, w: float) -> ModelBundle:
    """The fine-tuned bundle with weights ``(1 - w) * base + w * tuned``; tensors equal in both are marked frozen
    and the model is rebuilt from the base's source."""
    base_state, tuned_state = base.model.state_dict(), tuned.model.state_dict()
    tuned.model.load_state_dict(interpolate_state(base_state, tuned_state, w))
    for name, p in tuned.model.named_parameters():
        p.requires_grad_(not torch.equal(p.detach(), base_state[name]))
    return replace(tuned, name=f"wise-ft({base.name}, {tuned.name}, w={w:g})", source=base.source)
