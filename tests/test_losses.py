"""Fast grouped losses against the loop oracles of clearglass_testing/loss_oracles.py, plus properties and errors."""

from __future__ import annotations

import math
import re
import typing

import pytest
import torch
from open_clip.loss import ClipLoss

from clearglass import losses
from clearglass.errors import ClearglassError
from clearglass.losses import (
    INNER_TERMS,
    LOSSES,
    OUTER_TERMS,
    GroupedContrastiveLoss,
    MultiLevelGroupedLoss,
    _Batch,
    _NormalizeRows,
    add_self_regularisation,
    clip_outer,
    make_loss,
    pairwise_outer,
    self_regularisation,
)
from clearglass.train.config import LossConfig
from clearglass_testing.loss_oracles import autograd_grouped_loss, oracle_multilevel, oracle_terms

OUTERS = ["pairwise", "centroid", "clip"]
INNERS = [None, "pairwise", "scaled_pairwise", "centroid", "scaled_centroid"]
SHAPES = [(2, 1, 4), (3, 4, 8), (5, 2, 16)]


def features(m: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (M, N, D) image and text features with a shared per-group direction, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    concept = torch.randn(m, 1, d, generator=g)
    images = (concept + torch.randn(m, n, d, generator=g)).requires_grad_()
    texts = (concept + torch.randn(m, n, d, generator=g)).requires_grad_()
    return images, texts


def grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d inputs."""
    return list(torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("outer", OUTERS)
def test_matches_oracle_values_and_gradients(outer, inner, shape):
    images, texts = features(*shape)
    kw = dict(outer=outer, inner=inner, alpha=0.6, tau=0.2, tau_inner=0.05)
    fast = GroupedContrastiveLoss(**kw)(images, texts)
    slow = oracle_terms(images, texts, **kw)
    assert set(fast) == set(slow)
    for key in fast:
        assert fast[key].dtype == torch.float32
        torch.testing.assert_close(fast[key].double(), slow[key], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(fast["loss"], [images, texts]), grads(slow["loss"], [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_normalize_rows_matches_f_normalize_with_floored_rows():
    images, texts = (x.reshape(-1, 8) for x in features(3, 2, 8))
    g = torch.Generator().manual_seed(5)
    tiny = (torch.randn(6, 8, generator=g) * torch.tensor([0.0, 1e-14, 1.0, 1.0, 1.0, 1.0])[:, None]).requires_grad_()
    for x, y in ((images, texts), (tiny, texts)):  # rows 0 and 1 of tiny have norms below the eps floor
        fast = _NormalizeRows.apply(x, y)
        slow = (torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(y, dim=-1))
        weights = [torch.randn(t.shape, generator=torch.Generator().manual_seed(3)) for t in slow]
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b)
        fast_loss = sum((w * t).sum() for w, t in zip(weights, fast))
        slow_loss = sum((w * t).sum() for w, t in zip(weights, slow))
        for a, b in zip(grads(fast_loss, [x, y]), grads(slow_loss, [x, y])):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("owned", [(0, 4), (2, 4), (1, 3)])  # owned groups: all, rank 1 of 2 under local_loss, middle
def test_pairwise_outer_block_positives_match_the_label_mask(n, owned):
    m, d = 4, 8
    images, texts = (x.detach().reshape(-1, d).requires_grad_() for x in features(m, n, d))
    negatives = torch.randn(3, d, generator=torch.Generator().manual_seed(4)).requires_grad_()
    scale = torch.tensor(7.0, requires_grad=True)
    labels, rows = torch.arange(m).repeat_interleave(n), slice(owned[0] * n, owned[1] * n)
    unit = torch.nn.functional.normalize
    losses = [pairwise_outer(_Batch(unit(images, dim=-1), unit(texts, dim=-1), labels, m, rows, 2.0, block), scale,
                             negatives) for block in (n, None)]  # diagonal blocks, then the (R, B) label mask
    torch.testing.assert_close(losses[0], losses[1])
    inputs = [images, texts, negatives, scale]
    for a, b in zip(grads(losses[0], inputs), grads(losses[1], inputs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8])  # one group per tile, not dividing M=5, dividing, all, more
@pytest.mark.parametrize("outer", ["pairwise", "clip"])
def test_chunked_terms_match_oracle_and_the_whole_computation(outer, chunk):
    images, texts = features(5, 3, 8)
    negatives = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    kw = dict(outer=outer, inner="scaled_pairwise", alpha=0.6, tau=0.2, tau_inner=0.05, learn_tau=True)
    tiled_fn, whole_fn = GroupedContrastiveLoss(**kw, chunk=chunk), GroupedContrastiveLoss(**kw)
    tiled, whole = tiled_fn(images, texts, negatives), whole_fn(images, texts, negatives)
    log_scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)  # tau = 0.2, learnt
    slow = oracle_terms(images, texts, outer, "scaled_pairwise", 0.6, torch.exp(-log_scale), 0.05, negatives)
    for key in slow:
        torch.testing.assert_close(tiled[key].double(), slow[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiled[key], whole[key])
    inputs = [images, texts, negatives]
    tiled_grads = grads(tiled["loss"], inputs + [tiled_fn.logit_scale])
    whole_grads = grads(whole["loss"], inputs + [whole_fn.logit_scale])
    for a, b, c in zip(tiled_grads, whole_grads, grads(slow["loss"], inputs + [log_scale])):
        torch.testing.assert_close(a.double(), c.double(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("budget", [1, 2 * 8 * 8 * (4 + 5), 10**6])  # N*N*(D+G) floats a group: 1, 2 of 5, all
def test_inner_chunks_from_the_memory_budget_match_the_oracle(monkeypatch, budget):
    monkeypatch.setattr(losses, "INNER_CHUNK_FLOATS", budget)
    images, texts = features(5, 8, 4)
    fast = GroupedContrastiveLoss(inner="scaled_pairwise", tau_inner=0.05)(images, texts)
    slow = oracle_terms(images, texts, inner="scaled_pairwise", tau_inner=0.05)
    torch.testing.assert_close(fast["inner_loss"].double(), slow["inner_loss"], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(fast["loss"], [images, texts]), grads(slow["loss"], [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("owned", [(0, 4), (2, 4), (1, 4)])  # owned groups: all, rank 1 of 2 under local_loss, 3 of 4
def test_tiled_outer_terms_match_the_masked_ones_on_owned_rows(owned, chunk):
    m, n, d = 4, 3, 8
    images, texts = (x.detach().reshape(-1, d).requires_grad_() for x in features(m, n, d))
    negatives = torch.randn(3, d, generator=torch.Generator().manual_seed(4)).requires_grad_()
    scale = torch.tensor(7.0, requires_grad=True)
    unit, labels, rows = torch.nn.functional.normalize, torch.arange(m).repeat_interleave(n), slice(*owned)
    inputs = [images, texts, negatives, scale]
    for term in (pairwise_outer, clip_outer):  # tiled, then the untiled label-mask / cross-entropy computation
        tiled, whole = (term(_Batch(unit(images, dim=-1), unit(texts, dim=-1), labels, m,
                                    slice(rows.start * n, rows.stop * n), 2.0, block), scale, negatives, size)
                        for block, size in ((n, chunk), (None, None)))
        torch.testing.assert_close(tiled, whole)
        for a, b in zip(grads(tiled, inputs), grads(whole, inputs)):
            torch.testing.assert_close(a, b)


def test_chunked_float32_loss_agrees_with_the_whole_one_at_512_pairs():
    images, texts = features(64, 8, 32)
    tiled = GroupedContrastiveLoss(chunk=5)(images, texts)["loss"]
    whole = GroupedContrastiveLoss()(images, texts)["loss"]
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(tiled, [images, texts]), grads(whole, [images, texts])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_chunked_multilevel_matches_oracle():
    images, texts = features(5, 2, 8)
    level2, negatives = torch.tensor([7, 3, 7, 7, 3]), torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(outer="pairwise", inner="scaled_pairwise", alpha=0.6, tau=0.2, tau_inner=0.05)
    fast = MultiLevelGroupedLoss(0.5, 1.0, 0.3, **kw, chunk=2)(images, texts, level2, text_negatives=negatives)
    slow = oracle_multilevel(images, texts, level2, 0.5, 1.0, 0.3, text_negatives=negatives, **kw)
    for key in fast:
        torch.testing.assert_close(fast[key].double(), slow[key], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(fast["loss"], [images, texts]), grads(slow["loss"], [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_chunk_setting_is_validated_and_reaches_the_loss_from_the_config():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ClearglassError, match=r"chunk: expected None \(null in JSON.*a number of groups >= 1"):
            GroupedContrastiveLoss(chunk=bad)
    with pytest.raises(ClearglassError, match="chunk: expected None .* got 0"):
        LossConfig(chunk=0)
    assert LossConfig().chunk is None
    assert make_loss(**LossConfig(chunk=3).to_dict()).chunk == 3
    assert make_loss(**LossConfig(kind="multilevel", chunk=2).to_dict()).grouped.chunk == 2


BAD_SETTINGS = [("outer", "triplet"), ("outer", ["clip"]), ("inner", "nope"), ("alpha", 1.5), ("alpha", True),
                ("tau", 0.0), ("tau_inner", math.inf), ("chunk", 0), ("instance_weight", -1.0),
                ("level2_weight", math.nan)]


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
def test_a_bad_setting_gets_one_message_from_the_loss_and_from_the_training_config(name, value):
    kind = "multilevel" if name.endswith("_weight") else "grouped"
    with pytest.raises(ClearglassError, match=f"^{name}: expected .*, got {re.escape(repr(value))}$") as from_loss:
        make_loss(**{**LossConfig(kind=kind).to_dict(), name: value})
    with pytest.raises(ClearglassError) as from_config:
        LossConfig(kind=kind, **{name: value})
    assert str(from_config.value) == str(from_loss.value)


def test_the_config_offers_exactly_the_registered_losses_and_terms():
    hints = typing.get_type_hints(LossConfig)
    assert typing.get_args(hints["kind"]) == tuple(LOSSES)
    assert typing.get_args(hints["outer"]) == tuple(OUTER_TERMS) == ("pairwise", "centroid", "clip")
    assert typing.get_args(typing.get_args(hints["inner"])[0]) == tuple(INNER_TERMS)
    for name, term in {**OUTER_TERMS, **INNER_TERMS}.items():
        assert term.needs in ("groups", "pairs", None), name
    assert [n for n, t in OUTER_TERMS.items() if t.takes_negatives] == ["pairwise", "clip"]
    assert LOSSES["clip"].outer_term("centroid") is OUTER_TERMS["clip"]  # the baseline ignores loss.outer
    assert make_loss(**LossConfig(kind="clip", outer="centroid").to_dict()).outer == LOSSES["clip"].outer
    assert LOSSES["grouped"].outer_term("centroid") is OUTER_TERMS["centroid"]


def test_autograd_twin_of_the_default_loss_matches_oracle():
    images, texts = features(3, 4, 8)
    twin = autograd_grouped_loss(images, texts, alpha=0.6, tau=0.2, tau_inner=0.05)
    slow = oracle_terms(images, texts, alpha=0.6, tau=0.2, tau_inner=0.05)["loss"]
    torch.testing.assert_close(twin.double(), slow, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(twin, [images, texts]), grads(slow, [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("outer", ["pairwise", "clip"])
def test_text_negatives_enter_image_to_text_denominator(outer):
    images, texts = features(3, 2, 8)
    negatives = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    kw = dict(outer=outer, inner="scaled_pairwise")
    fast = GroupedContrastiveLoss(**kw)(images, texts, text_negatives=negatives)
    slow = oracle_terms(images, texts, text_negatives=negatives, **kw)
    torch.testing.assert_close(fast["loss"].double(), slow["loss"], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(fast["loss"], [images, texts, negatives]), grads(slow["loss"], [images, texts, negatives])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)
    without = GroupedContrastiveLoss(**kw)(images, texts)
    assert fast["outer_loss"] > without["outer_loss"]
    torch.testing.assert_close(fast["inner_loss"], without["inner_loss"])


@pytest.mark.parametrize("inner", INNERS)
def test_bf16_autocast_is_computed_in_float32(inner):
    images, texts = features(4, 3, 32)
    loss_fn = GroupedContrastiveLoss(inner=inner)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = loss_fn(images.bfloat16(), texts.bfloat16())
    assert fast["loss"].dtype == torch.float32
    slow = oracle_terms(images.bfloat16(), texts.bfloat16(), inner=inner)
    torch.testing.assert_close(fast["loss"].double(), slow["loss"], rtol=1e-4, atol=1e-4)
    fast_grads = grads(fast["loss"], [images, texts])
    for a, b in zip(fast_grads, grads(slow["loss"], [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("local_tau", [0.1, 0.05])
def test_pairwise_with_one_pair_per_group_is_open_clip_loss(local_tau):
    images, texts = features(6, 1, 16)
    ours = GroupedContrastiveLoss(outer="pairwise", inner=None, tau=local_tau)(images, texts)["loss"]
    img = torch.nn.functional.normalize(images[:, 0], dim=-1)
    txt = torch.nn.functional.normalize(texts[:, 0], dim=-1)
    theirs = ClipLoss()(img, txt, torch.tensor(1.0 / local_tau))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(grads(ours, [images, texts]), grads(theirs, [images, texts])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("outer", ["pairwise", "centroid"])
def test_invariant_to_permuting_groups_and_pairs_within_groups(outer, inner):
    images, texts = features(4, 3, 8)
    loss_fn = GroupedContrastiveLoss(outer=outer, inner=inner)
    reference = loss_fn(images, texts)["loss"]
    group_perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(loss_fn(images[group_perm], texts[group_perm])["loss"], reference)
    pair_perm = torch.stack([torch.randperm(3, generator=torch.Generator().manual_seed(g)) for g in range(4)])
    shuffled_images = torch.stack([images[g, pair_perm[g]] for g in range(4)])
    shuffled_texts = torch.stack([texts[g, pair_perm[g]] for g in range(4)])
    torch.testing.assert_close(loss_fn(shuffled_images, shuffled_texts)["loss"], reference)


def test_inner_none_reports_outer_only_and_alpha_mixes_terms():
    images, texts = features(3, 2, 8)
    outer_only = GroupedContrastiveLoss(inner=None)(images, texts)
    assert "inner_loss" not in outer_only
    assert outer_only["loss"] is outer_only["outer_loss"]
    out = GroupedContrastiveLoss(alpha=0.25)(images, texts)
    torch.testing.assert_close(out["loss"], 0.25 * out["outer_loss"] + 0.75 * out["inner_loss"])
    torch.testing.assert_close(out["outer_loss"], outer_only["outer_loss"])


def test_defaults_follow_the_reference():
    loss_fn = GroupedContrastiveLoss()
    assert (loss_fn.outer, loss_fn.inner, loss_fn.alpha, loss_fn.tau, loss_fn.tau_inner) == \
        ("pairwise", "scaled_pairwise", 0.7, 0.1, 0.07)
    assert loss_fn.logit_scale is None and list(loss_fn.parameters()) == []


@pytest.mark.parametrize("outer", OUTERS)
@pytest.mark.parametrize("inner", INNERS)
def test_one_pair_per_group_and_degenerate_features_are_finite(outer, inner):
    images, texts = features(3, 1, 8)
    out = GroupedContrastiveLoss(outer=outer, inner=inner)(images, texts)
    assert all(torch.isfinite(v) for v in out.values())
    assert all(torch.isfinite(g).all() for g in grads(out["loss"], [images, texts]))
    if inner == "pairwise":  # one product per group is its own centroid
        assert abs(out["inner_loss"].item()) < 1e-6
    zeros = torch.zeros(3, 2, 8, requires_grad=True)  # zero vectors and zero image*text products
    out = GroupedContrastiveLoss(outer=outer, inner=inner)(zeros, torch.randn(3, 2, 8))
    assert torch.isfinite(out["loss"]) and torch.isfinite(grads(out["loss"], [zeros])[0]).all()


def test_learn_tau_initialises_at_log_inverse_tau_and_clamps_at_log_100():
    images, texts = features(3, 2, 8)
    loss_fn = GroupedContrastiveLoss(inner=None, tau=0.2, learn_tau=True)
    assert isinstance(loss_fn.logit_scale, torch.nn.Parameter)
    torch.testing.assert_close(loss_fn.logit_scale.detach(), torch.tensor(math.log(5.0)))
    fixed = GroupedContrastiveLoss(inner=None, tau=0.2)(images, texts)["loss"]
    learnt = loss_fn(images, texts)["loss"]
    torch.testing.assert_close(learnt, fixed)
    assert loss_fn.logit_scale.grad is None
    learnt.backward()
    assert loss_fn.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1000.0))
    loss_fn.logit_scale.grad = None
    clamped = loss_fn(images, texts)["loss"]
    torch.testing.assert_close(clamped, GroupedContrastiveLoss(inner=None, tau=0.01)(images, texts)["loss"])
    clamped.backward()
    assert loss_fn.logit_scale.grad == 0


def test_tau_inner_is_not_learnt():
    images, texts = features(3, 2, 8)
    a = GroupedContrastiveLoss(learn_tau=True, tau=0.1)(images, texts)
    b = GroupedContrastiveLoss(tau=0.1)(images, texts)
    torch.testing.assert_close(a["inner_loss"], b["inner_loss"])


BAD_INPUTS = [
    (torch.randn(3, 2, 8), torch.randn(3, 2, 4), r"same \(M groups, N pairs, D\) shape"),
    (torch.randn(6, 8), torch.randn(6, 8), r"expected a 3-D tensor \(M groups"),
    (torch.randn(3, 0, 8), torch.randn(3, 0, 8), "no empty axis"),
    (torch.randn(1, 4, 8), torch.randn(1, 4, 8), "needs M >= 2 groups"),
    (torch.ones(3, 2, 8, dtype=torch.long), torch.ones(3, 2, 8, dtype=torch.long), "floating-point"),
    (torch.randn(3, 2, 8).index_put_((torch.tensor(2), torch.tensor(1), torch.tensor(5)), torch.tensor(math.nan)),
     torch.randn(3, 2, 8), r"finite features, found NaN/inf at index \(2, 1\)"),
    (torch.randn(3, 2, 8), torch.full((3, 2, 8), math.inf), "text_features: expected finite"),
]


@pytest.mark.parametrize("images,texts,message", BAD_INPUTS)
def test_bad_features_raise_value_error_saying_what_was_expected(images, texts, message):
    with pytest.raises(ClearglassError, match=message) as info:
        GroupedContrastiveLoss()(images, texts)
    assert isinstance(info.value, ValueError)


def test_bad_configuration_and_negatives_raise():
    images, texts = features(3, 2, 8)
    with pytest.raises(ClearglassError, match="outer: expected one of"):
        GroupedContrastiveLoss(outer="triplet")
    with pytest.raises(ClearglassError, match="inner: expected one of"):
        GroupedContrastiveLoss(inner="nope")
    with pytest.raises(ClearglassError, match="alpha"):
        GroupedContrastiveLoss(alpha=1.5)
    with pytest.raises(ClearglassError, match="tau_inner"):
        GroupedContrastiveLoss(tau_inner=0.0)
    with pytest.raises(ClearglassError, match=r"text_negatives: expected a floating \(K, D=8\)"):
        GroupedContrastiveLoss()(images, texts, text_negatives=torch.randn(4, 7))
    with pytest.raises(ClearglassError, match="outer='centroid'"):
        GroupedContrastiveLoss(outer="centroid")(images, texts, text_negatives=torch.randn(4, 8))
    with pytest.raises(ClearglassError, match="text_negatives: expected finite"):
        GroupedContrastiveLoss()(images, texts, text_negatives=torch.full((2, 8), math.nan))
    with pytest.raises(ClearglassError, match="M >= 2 groups"):
        GroupedContrastiveLoss(outer="clip", inner="scaled_centroid")(*features(1, 3, 8))
    with pytest.raises(ClearglassError, match="M\\*N >= 2"):
        GroupedContrastiveLoss(outer="clip", inner=None)(*features(1, 1, 8))
    assert torch.isfinite(GroupedContrastiveLoss(outer="clip", inner="pairwise")(*features(1, 3, 8))["loss"])


@pytest.mark.parametrize("outer,inner", [("pairwise", "scaled_pairwise"), ("centroid", "pairwise"),
                                         ("pairwise", "scaled_centroid"), ("pairwise", "centroid")])
def test_multilevel_matches_oracle(outer, inner):
    images, texts = features(5, 2, 8)
    level2 = torch.tensor([7, 3, 7, 7, 3])
    negatives = None if outer == "centroid" else torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(outer=outer, inner=inner, alpha=0.6, tau=0.2, tau_inner=0.05)
    fast = MultiLevelGroupedLoss(0.5, 1.0, 0.3, **kw)(images, texts, level2, text_negatives=negatives)
    slow = oracle_multilevel(images, texts, level2, 0.5, 1.0, 0.3, text_negatives=negatives, **kw)
    assert set(fast) == {"instance_loss", "level1_loss", "level2_loss", "loss"} == set(slow)
    for key in fast:
        torch.testing.assert_close(fast[key].double(), slow[key], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(fast["loss"], [images, texts]), grads(slow["loss"], [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_multilevel_terms_are_the_grouped_losses():
    images, texts = features(4, 3, 8)
    out = MultiLevelGroupedLoss(level2_weight=0.0)(images, texts)
    assert set(out) == {"instance_loss", "level1_loss", "loss"}
    torch.testing.assert_close(out["instance_loss"], GroupedContrastiveLoss("clip", None)(images, texts)["loss"])
    torch.testing.assert_close(out["level1_loss"], GroupedContrastiveLoss()(images, texts)["loss"])
    one_group_each = MultiLevelGroupedLoss()(images, texts, torch.tensor([4, 9, 1, 0]))
    torch.testing.assert_close(one_group_each["level2_loss"], out["level1_loss"])


@pytest.mark.parametrize("outer,inner", [("pairwise", "scaled_pairwise"), ("centroid", "pairwise")])
def test_multilevel_batch_with_one_level2_group_is_exact_not_an_error(outer, inner):
    """Groups that all share a level-2 parent (siblings drawn as hard negatives) form one level-2 group."""
    images, texts = features(4, 3, 8)
    kw = dict(outer=outer, inner=inner, alpha=0.6, tau=0.2, tau_inner=0.05)
    fast = MultiLevelGroupedLoss(0.5, 1.0, 0.3, **kw)(images, texts, torch.tensor([3, 3, 3, 3]))
    slow = oracle_multilevel(images, texts, torch.tensor([3, 3, 3, 3]), 0.5, 1.0, 0.3, **kw)
    for key in fast:
        torch.testing.assert_close(fast[key].double(), slow[key], rtol=1e-5, atol=1e-6)
    if inner == "scaled_pairwise":  # only positives: the contrastive level-2 terms are exactly 0, no gradient
        level2_only = MultiLevelGroupedLoss(0.0, 0.0, 1.0, **kw)(images, texts, torch.tensor([3, 3, 3, 3]))["loss"]
        assert fast["level2_loss"] == 0 and not any(g.abs().max() for g in grads(level2_only, [images, texts]))
    for a, b in zip(grads(fast["loss"], [images, texts]), grads(slow["loss"], [images, texts])):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_multilevel_errors():
    images, texts = features(4, 3, 8)
    with pytest.raises(ClearglassError, match="level2_ids: expected an \\(M,\\) tensor"):
        MultiLevelGroupedLoss()(images, texts)
    with pytest.raises(ClearglassError, match=r"shape \(M=4,\)"):
        MultiLevelGroupedLoss()(images, texts, torch.tensor([0, 1, 0]))
    with pytest.raises(ClearglassError, match=r"integer tensor"):
        MultiLevelGroupedLoss()(images, texts, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ClearglassError, match="level1_weight"):
        MultiLevelGroupedLoss(level1_weight=-1.0)


def test_huge_finite_features_are_not_reported_as_non_finite():
    images = torch.full((3, 2, 8), 1e37)  # their sum overflows float32; every value is finite
    out = GroupedContrastiveLoss()(images, torch.randn(3, 2, 8))
    assert torch.isfinite(out["loss"])


def test_self_regularisation_is_zero_at_the_base_and_one_minus_cosine_elsewhere():
    images, texts = features(3, 2, 8)
    base = images.detach().clone()
    assert self_regularisation(images, base).item() == pytest.approx(0.0, abs=1e-6)
    assert self_regularisation(3.0 * images, base).item() == pytest.approx(0.0, abs=1e-6)  # scale is not distance
    oracle = torch.stack([1.0 - torch.dot(a, b) / (a.norm() * b.norm())
                          for a, b in zip(images.reshape(-1, 8), texts.reshape(-1, 8))]).mean()
    value = self_regularisation(images, texts)
    torch.testing.assert_close(value, oracle)
    unit = [x / x.norm(dim=-1, keepdim=True) for x in (images, texts)]
    torch.testing.assert_close(value, 0.5 * (unit[0] - unit[1]).square().sum(-1).mean())  # = |u - v|^2 / 2
    value.backward()
    assert images.grad is not None and texts.grad is None  # the base's side is a constant
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert self_regularisation(images.bfloat16(), texts.bfloat16()).dtype == torch.float32
    with pytest.raises(ClearglassError, match=r"same \(\.\.\., D\) shape, got \(3, 2, 8\) and \(3, 8\)"):
        self_regularisation(images, texts[:, 0])


def test_self_regularisation_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    base = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: self_regularisation(f, base), (x,), eps=1e-6, atol=1e-8)
    near = x.detach() + 0.01 * base  # near the base, where the term is small
    assert torch.autograd.gradcheck(lambda f: self_regularisation(f, near), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_every_named_loss_takes_the_self_regularisation_term(kind):
    loss = make_loss(**{**LossConfig(kind=kind).to_dict(), "self_reg": 0.5})
    images, texts = features(4, 2, 8)
    extra = {"level2_ids": torch.tensor([0, 0, 1, 1])} if LOSSES[kind].needs_level2 else {}
    terms = loss(images, texts, **extra)
    base_images, base_texts = images.detach() + 0.3 * torch.randn(4, 2, 8), texts.detach()
    out = add_self_regularisation(terms, [(images, base_images), (texts, base_texts)], 0.5)
    expected = 0.5 * (self_regularisation(images, base_images) + self_regularisation(texts, base_texts))
    assert out.keys() == terms.keys() | {"self_reg_loss"}
    torch.testing.assert_close(out["self_reg_loss"], expected)
    torch.testing.assert_close(out["loss"], terms["loss"] + 0.5 * expected)
    assert all(torch.equal(out[k], terms[k]) for k in terms if k != "loss")
    with pytest.raises(ClearglassError, match="at least one"):
        add_self_regularisation(terms, [], 0.5)
