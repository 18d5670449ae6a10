"""Hierarchy-aware attention: priors against loop oracles, reduction to plain attention, padding, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from clearglass.errors import ClearglassError
from clearglass.hierarchy_attention import (
    LOG_LINK_FLOOR,
    HierarchyAwareAttention,
    HierarchyAwareBlock,
    HierarchyAwareTransformer,
    Links,
    grid_link_log_probs,
    grid_log_prior,
    merge_links,
    sequence_link_log_probs,
    sequence_log_prior,
)


@pytest.fixture(autouse=True)
def _seed_and_float64():
    """Oracle comparisons run in float64 at tight tolerance; the default dtype is restored afterwards."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _prod(values: list[float]) -> float:
    return math.prod(max(v, math.exp(LOG_LINK_FLOOR)) for v in values)


def _grid_oracle(a_h: torch.Tensor, a_v: torch.Tensor) -> torch.Tensor:
    """C between every pair of patches by walking both L-shaped paths link by link."""
    gh, gw = a_h.shape[0], a_v.shape[1]
    c = torch.zeros(gh * gw, gh * gw)
    for r1 in range(gh):
        for c1 in range(gw):
            for r2 in range(gh):
                for c2 in range(gw):
                    row1 = [a_h[r1, k].item() for k in range(min(c1, c2), max(c1, c2))]
                    col2 = [a_v[k, c2].item() for k in range(min(r1, r2), max(r1, r2))]
                    col1 = [a_v[k, c1].item() for k in range(min(r1, r2), max(r1, r2))]
                    row2 = [a_h[r2, k].item() for k in range(min(c1, c2), max(c1, c2))]
                    c[r1 * gw + c1, r2 * gw + c2] = math.sqrt(_prod(row1 + col2) * _prod(col1 + row2))
    return c


def _sequence_oracle(a: torch.Tensor, link_valid: torch.Tensor) -> torch.Tensor:
    n = a.shape[0] + 1
    c = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            lo, hi = min(i, j), max(i, j)
            crossed = range(lo, hi)
            c[i, j] = 0.0 if not all(link_valid[k] for k in crossed) else _prod([a[k].item() for k in crossed])
    return c


def test_grid_prior_matches_loop_oracle_and_is_symmetric_probability():
    gh, gw = 3, 4
    a_h, a_v = torch.rand(2, gh, gw - 1), torch.rand(2, gh - 1, gw)
    a_h[0, 1, 2] = 0.0  # a cut link exercises the floor
    c = grid_log_prior(a_h, a_v).exp()
    for b in range(2):
        torch.testing.assert_close(c[b], _grid_oracle(a_h[b], a_v[b]))
    assert (c >= 0).all() and (c <= 1).all()
    torch.testing.assert_close(c, c.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(c, dim1=1, dim2=2), torch.ones(2, gh * gw))


def test_sequence_prior_matches_loop_oracle_with_invalid_links():
    a = torch.rand(2, 7)
    link_valid = torch.ones(2, 7, dtype=torch.bool)
    link_valid[1, 4:] = False  # right padding after token 4
    link_valid[0, 2] = False  # a break in the middle
    c = sequence_log_prior(a, link_valid).exp()
    for b in range(2):
        torch.testing.assert_close(c[b], _sequence_oracle(a[b], link_valid[b]))
    torch.testing.assert_close(c, c.transpose(1, 2))


def _neighbour_softmax_oracle(q, k, neighbours):
    """p_{i->j} for each token i over its listed neighbours, scores q_i.k_j / d."""
    d = q.shape[-1]
    out = {}
    for i, nbrs in neighbours.items():
        scores = torch.stack([q[i] @ k[j] / d for j in nbrs])
        for j, p in zip(nbrs, scores.softmax(0)):
            out[(i, j)] = p
    return out


def test_grid_link_probs_match_neighbour_softmax_oracle():
    gh, gw, d = 3, 4, 5
    q, k = torch.randn(gh, gw, d) * 4, torch.randn(gh, gw, d) * 4
    steps = ((0, -1), (0, 1), (-1, 0), (1, 0))
    neighbours = {
        (r, c): [(r + dr, c + dc) for dr, dc in steps if 0 <= r + dr < gh and 0 <= c + dc < gw]
        for r in range(gh)
        for c in range(gw)
    }
    p = _neighbour_softmax_oracle(q, k, neighbours)
    log_h, log_v = grid_link_log_probs(q[None], k[None])
    for r in range(gh):
        for c in range(gw - 1):
            expected = torch.sqrt(p[((r, c), (r, c + 1))] * p[((r, c + 1), (r, c))])
            torch.testing.assert_close(log_h[0, r, c].exp(), expected)
    for r in range(gh - 1):
        for c in range(gw):
            expected = torch.sqrt(p[((r, c), (r + 1, c))] * p[((r + 1, c), (r, c))])
            torch.testing.assert_close(log_v[0, r, c].exp(), expected)


def test_sequence_link_probs_ignore_padded_neighbours():
    n, d = 6, 4
    q, k = torch.randn(1, n, d) * 4, torch.randn(1, n, d) * 4
    valid = torch.tensor([[True, True, True, True, False, False]])
    log_link, link_valid = sequence_link_log_probs(q, k, valid)
    assert link_valid.tolist() == [[True, True, True, False, False]]
    neighbours = {0: [1], 1: [0, 2], 2: [1, 3], 3: [2]}  # token 3 never sees padded token 4
    p = _neighbour_softmax_oracle(q[0], k[0], neighbours)
    for i in range(3):
        torch.testing.assert_close(log_link[0, i].exp(), torch.sqrt(p[(i, i + 1)] * p[(i + 1, i)]))


def test_links_and_prior_monotone_across_layers_and_cls_has_no_prior():
    gh, gw = 3, 3
    model = HierarchyAwareTransformer(16, 4, 2, grid_size=(gh, gw), num_prefix_tokens=1)
    priors = []
    for block in model.resblocks:
        block.attn.register_forward_pre_hook(lambda mod, args: priors.append(args[1]))
    _, links = model.forward_links(torch.randn(2, 1 + gh * gw, 16))
    for prev, cur in zip(links, links[1:]):
        assert (cur.horizontal >= prev.horizontal).all() and (cur.vertical >= prev.vertical).all()
    c = [p.exp() for p in priors]
    for prev, cur in zip(c, c[1:]):
        assert (cur >= prev - 1e-12).all()
    for lay, cl in zip(links, c):
        assert (cl[:, 0, :] == 1).all() and (cl[:, :, 0] == 1).all()  # CLS row and column
        torch.testing.assert_close(cl[:, 1:, 1:], grid_log_prior(lay.horizontal, lay.vertical).exp())
        assert (cl >= 0).all() and (cl <= 1).all()
        torch.testing.assert_close(cl, cl.transpose(1, 2))


def test_merge_is_monotone_and_bounded():
    prev, log_new = torch.rand(100), torch.rand(100).log()
    merged = merge_links(prev, log_new)
    assert (merged >= prev).all() and (merged <= 1).all()
    torch.testing.assert_close(merged, prev + (1 - prev) * log_new.exp())


@pytest.mark.parametrize("renormalize", [False, True])
def test_attention_with_prior_matches_per_head_oracle(renormalize):
    batch, n, width, heads = 2, 5, 12, 3
    attn = HierarchyAwareAttention(width, heads, renormalize)
    x = torch.randn(batch, n, width, requires_grad=True)
    log_prior = torch.rand(batch, n, n).log()
    out = attn(x, log_prior)
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    dh = width // heads
    head_outs = []
    for h in range(heads):
        q, k, v = (t[..., h * dh : (h + 1) * dh] for t in qkv)
        scores = q @ k.transpose(1, 2) / math.sqrt(dh)
        if renormalize:
            w = (scores + log_prior).softmax(-1)
        else:
            w = scores.softmax(-1) * log_prior.exp()
        head_outs.append(w @ v)
    expected = attn.out_proj(torch.cat(head_outs, -1))
    torch.testing.assert_close(out, expected)
    g_fast = torch.autograd.grad(out.square().sum(), x)[0]
    g_slow = torch.autograd.grad(expected.square().sum(), x)[0]
    torch.testing.assert_close(g_fast, g_slow)


@pytest.mark.parametrize("renormalize", [False, True])
def test_block_with_all_links_one_equals_open_clip_block(renormalize):
    gh, gw, width, heads = 2, 3, 16, 4
    plain = ResidualAttentionBlock(width, heads, batch_first=True)
    hier = HierarchyAwareBlock(width, heads, grid_size=(gh, gw), num_prefix_tokens=1, renormalize=renormalize)
    missing, unexpected = hier.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(f"attn.link_{p}.{w}" for p in ("query", "key") for w in ("weight", "bias"))
    assert not unexpected
    x = torch.randn(3, 1 + gh * gw, width)
    ones = Links(torch.ones(3, gh, gw - 1), torch.ones(3, gh - 1, gw))
    out, links = hier(x, ones)
    assert (links.horizontal == 1).all() and (links.vertical == 1).all()
    torch.testing.assert_close(out, plain(x))
    # and the attention alone against torch's fused kernel
    attn_out = hier.attn(x, torch.zeros(3, x.shape[1], x.shape[1]))
    mha_out = plain.attn(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(attn_out, mha_out)


def test_sequence_block_with_all_links_one_equals_sdpa_with_padding():
    width, heads, n = 8, 2, 6
    attn = HierarchyAwareAttention(width, heads)
    x = torch.randn(2, n, width)
    valid = torch.tensor([[True] * n, [True] * 4 + [False] * 2])
    out = attn(x, torch.zeros(2, n, n), valid)
    q, k, v = (
        t.view(2, n, heads, width // heads).transpose(1, 2)
        for t in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    )
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    ref = attn.out_proj(ref.transpose(1, 2).reshape(2, n, width))
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1, :4], ref[1, :4])


@pytest.mark.parametrize("renormalize", [False, True])
def test_padding_does_not_change_real_tokens(renormalize):
    model = HierarchyAwareTransformer(16, 3, 4, grid_size=None, num_prefix_tokens=1, renormalize=renormalize)
    short = torch.randn(1, 5, 16)
    padded = torch.cat([short, 100 * torch.randn(1, 3, 16)], dim=1)
    valid = torch.tensor([[True] * 5 + [False] * 3])
    out_short, links_short = model.forward_links(short)
    out_padded, links_padded = model.forward_links(padded, valid)
    assert out_padded.isfinite().all()
    torch.testing.assert_close(out_padded[:, :5], out_short)
    for ls, lp in zip(links_short, links_padded):
        torch.testing.assert_close(lp.horizontal[:, :3], ls.horizontal)
        assert (lp.horizontal[:, 3:] == 0).all()


def test_gradients_finite_when_span_products_underflow():
    # long sequence, sharp link scores: products over spans fall far below float32/float64 range
    n, width = 600, 16
    model = HierarchyAwareTransformer(width, 2, 2, grid_size=None, num_prefix_tokens=1).float()
    with torch.no_grad():
        for block in model.resblocks:
            block.attn.link_query.weight.mul_(200.0)
    x = torch.randn(2, n, width, dtype=torch.float32, requires_grad=True)
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, 400:] = False
    out, links = model.forward_links(x, valid)
    assert links[0].horizontal.min() < 1e-20  # the sharp scores really produce cut links
    out[valid].sum().backward()
    assert x.grad.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_prior_gradient_finite_with_zero_links():
    a = torch.rand(1, 300)
    a[0, ::7] = 0.0
    a.requires_grad_(True)
    sequence_log_prior(a).exp().sum().backward()
    assert a.grad.isfinite().all()
    a_h, a_v = torch.zeros(1, 4, 3, requires_grad=True), torch.rand(1, 3, 4, requires_grad=True)
    grid_log_prior(a_h, a_v).exp().sum().backward()
    assert a_h.grad.isfinite().all() and a_v.grad.isfinite().all()


def test_drop_in_for_open_clip_vision_transformer():
    vit = VisionTransformer(image_size=32, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=4.0, output_dim=8)
    hier = HierarchyAwareTransformer(16, 2, 2, grid_size=vit.grid_size, num_prefix_tokens=1)
    hier.load_state_dict(vit.transformer.state_dict(), strict=False)
    vit.transformer = hier
    image = torch.randn(2, 3, 32, 32)
    out = vit(image)
    assert out.shape == (2, 8) and out.isfinite().all()
    vit.set_grad_checkpointing(True)
    torch.testing.assert_close(vit(image), out)


def test_errors_name_the_problem():
    model = HierarchyAwareTransformer(8, 1, 2, grid_size=(2, 2), num_prefix_tokens=1)
    with pytest.raises(ClearglassError, match="expected 1 prefix"):
        model(torch.randn(1, 6, 8))
    with pytest.raises(ClearglassError, match="attn_mask"):
        model(torch.randn(1, 5, 8), attn_mask=torch.zeros(5, 5))
    with pytest.raises(ClearglassError, match="key-padding"):
        model(torch.randn(1, 5, 8), key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ClearglassError, match="divisible"):
        HierarchyAwareAttention(10, 3)


def test_config_switch_builds_trains_and_round_trips_a_checkpoint(tmp_path):
    from clearglass.checkpoints import save_checkpoint
    from clearglass.models import load_model, lock_towers

    torch.set_default_dtype(torch.float32)
    bundle = load_model("clearglass:clearglass-vit-hier")
    model = bundle.model.eval()
    assert isinstance(model.visual.transformer, HierarchyAwareTransformer)
    assert len(model.text.hier_layers.resblocks) == 1
    images = torch.randn(2, 3, 64, 64)
    tokens = bundle.tokenizer(["a dog on grass", "two red apples in a bowl on a table"])
    with torch.no_grad():
        text_at_init = model.encode_text(tokens)
        # zero-initialised residual branches: the extra layers start as the identity on MiniLM's tokens
        plain = load_model("clearglass:clearglass-vit").model.eval()
        plain.text.load_state_dict(model.text.state_dict(), strict=False)
        torch.testing.assert_close(text_at_init, plain.text(tokens))
        model.text.hier_layers.resblocks[0].mlp.c_proj.bias.fill_(0.5)
        assert not torch.allclose(model.encode_text(tokens), text_at_init)  # the extra layers run
    lock_towers(bundle, lock_text=True)
    assert all(p.requires_grad for p in model.text.hier_layers.parameters())
    loss = model.encode_image(images).square().sum() + model.encode_text(tokens).square().sum()
    loss.backward()
    assert model.visual.transformer.resblocks[0].attn.link_query.weight.grad.isfinite().all()
    path = save_checkpoint(bundle, tmp_path / "hier.pt", train_config={}, dataset_sha256="x", metrics={})
    reloaded = load_model(str(path)).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images))
        torch.testing.assert_close(reloaded.encode_text(tokens), model.encode_text(tokens))


def test_config_switch_rejects_a_resnet_vision_tower():
    from open_clip.modified_resnet import ModifiedResNet

    from clearglass.hierarchy_attention import apply_hier_attention

    model = torch.nn.Module()
    model.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=8, heads=1, image_size=64, width=8)
    with pytest.raises(ClearglassError, match="needs a ViT image tower"):
        apply_hier_attention(model, {"vision": True})
    with pytest.raises(ClearglassError, match="unknown keys"):
        apply_hier_attention(model, {"visoin": True})
