"""HiCLIP-style hierarchy-aware attention: Tree-Transformer constituent priors for token sequences and patch grids.

Mechanism (Wang et al. 2019, "Tree Transformer"; HiCLIP, Geng et al. ICLR 2023), per layer l:

1. Neighbour affinity. From the block's normalised input x, q = W_q x, k = W_k x (link projections, separate from
   the attention's own q/k/v); the score of token i for neighbour j is s_{i,j} = q_i . k_j / d (d = width, the
   Tree-Transformer scaling), and p_{i->j} = softmax over i's neighbours only (2 on a sequence, up to 4 on a grid).
2. Symmetric link probability between neighbours i, j: â_{i,j} = sqrt(p_{i->j} p_{j->i}), computed as
   exp((log p_{i->j} + log p_{j->i}) / 2) from log-softmax, so it never takes sqrt or log of 0.
3. Monotone merge across layers: a_l = a_{l-1} + (1 - a_{l-1}) â_l (a_1 = â_1), so a_l >= a_{l-1}.
4. Span prior C_{i,j} = prod of the link probabilities on the path between i and j (C_{i,i} = 1), computed as
   exp of differences of prefix sums of log a. log a is clamped below at LOG_LINK_FLOOR = -30 (a link weaker than
   e^-30 counts as e^-30), so no -inf ever enters a sum and no -inf * 0 or inf - inf NaN can appear.
5. Attention weights E = C (elementwise) softmax(Q K^T / sqrt(d_head)), the same C for every head. Like Tree
   Transformer, E is NOT renormalised (rows sum to <= 1) unless `renormalize=True`, which instead uses
   softmax(Q K^T / sqrt(d_head) + log C) and runs on the fused scaled_dot_product_attention kernel.

Sequences (text): tokens i < j are linked through a_{i,i+1} ... a_{j-1,j}. A key-padding mask (True = real token)
makes a link valid only between two real tokens: a real token's neighbour softmax never sees a padded token, and
C = 0 exactly across any invalid link. Padded keys are masked out of attention (a padded query attends to itself only,
so its row stays finite; its output is meaningless and must be ignored by the caller).

Grids (images, patches in row-major order after the prefix tokens): each patch has up to 4 neighbours (left, right,
up, down). A horizontal link joins (r, c)-(r, c+1), a vertical link (r, c)-(r+1, c). For patches (r1, c1), (r2, c2),
    C = sqrt(C_A C_B),
    C_A = prod of horizontal links along row r1 from c1 to c2, times vertical links along column c2 from r1 to r2,
    C_B = prod of vertical links along column c1 from r1 to r2, times horizontal links along row r2 from c1 to c2,
the geometric mean of the two L-shaped paths, which is symmetric because swapping the patches swaps C_A and C_B.

Prefix tokens (CLS): the first `num_prefix_tokens` tokens take no part in linking and get no prior: C = 1 on their
rows and columns.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from clearglass.errors import ClearglassError

LOG_LINK_FLOOR = -30.0  # log a is clamped to >= this before span sums


class Links(NamedTuple):
    """Merged link probabilities a_l of one layer: `horizontal` (B, n-1) for a sequence or (B, gh, gw-1) for a
    grid; `vertical` (B, gh-1, gw) for a grid, None for a sequence."""

    horizontal: torch.Tensor
    vertical: torch.Tensor | None


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or in its own dtype when that is wider."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _pair_scores(q: torch.Tensor, k: torch.Tensor, dim: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each token for its next / previous neighbour along `dim`: s_fwd[i] = q_i.k_{i+1}*scale and
    s_bwd[i] = q_{i+1}.k_i*scale."""
    n = q.shape[dim]
    q_lo, q_hi = q.narrow(dim, 0, n - 1), q.narrow(dim, 1, n - 1)
    k_lo, k_hi = k.narrow(dim, 0, n - 1), k.narrow(dim, 1, n - 1)
    return (q_lo * k_hi).sum(-1) * scale, (q_hi * k_lo).sum(-1) * scale


def sequence_link_log_probs(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log â_{i,i+1} = (log p_{i->i+1} + log p_{i+1->i}) / 2 on a sequence -> (log â (B, n-1), link valid (B, n-1)).

    q, k: (B, n, d) link projections; valid: (B, n) bool, True = real token (None: all real).
    """
    batch, n, d = q.shape
    s_next, s_prev = _pair_scores(q, k, 1, 1.0 / d)  # (B, n-1): i -> i+1, i+1 -> i
    if valid is None:
        link_valid = torch.ones(batch, n - 1, dtype=torch.bool, device=q.device)
    else:
        link_valid = valid[:, :-1] & valid[:, 1:]
    neg = torch.finfo(s_next.dtype).min
    # (B, n, 2): each token's logits for [left neighbour, right neighbour]
    logits = torch.stack(
        [
            F.pad(s_prev.masked_fill(~link_valid, neg), (1, 0), value=neg),
            F.pad(s_next.masked_fill(~link_valid, neg), (0, 1), value=neg),
        ],
        dim=-1,
    )
    log_p = _at_least_fp32(logits).log_softmax(-1)
    log_link = 0.5 * (log_p[:, :-1, 1] + log_p[:, 1:, 0])  # (B, n-1)
    return log_link, link_valid


def grid_link_log_probs(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log â of the horizontal (B, gh, gw-1) and vertical (B, gh-1, gw) links of a grid; softmax over <= 4 neighbours.

    q, k: (B, gh, gw, d) link projections of the patches.
    """
    scale = 1.0 / q.shape[-1]
    s_right, s_left = _pair_scores(q, k, 2, scale)  # (B, gh, gw-1): (r,c)->(r,c+1), (r,c+1)->(r,c)
    s_down, s_up = _pair_scores(q, k, 1, scale)  # (B, gh-1, gw): (r,c)->(r+1,c), (r+1,c)->(r,c)
    neg = torch.finfo(s_right.dtype).min
    # (B, gh, gw, 4): each patch's logits for [left, right, up, down]
    logits = torch.stack(
        [
            F.pad(s_left, (1, 0), value=neg),
            F.pad(s_right, (0, 1), value=neg),
            F.pad(s_up, (0, 0, 1, 0), value=neg),
            F.pad(s_down, (0, 0, 0, 1), value=neg),
        ],
        dim=-1,
    )
    log_p = _at_least_fp32(logits).log_softmax(-1)
    log_h = 0.5 * (log_p[:, :, :-1, 1] + log_p[:, :, 1:, 0])
    log_v = 0.5 * (log_p[:, :-1, :, 3] + log_p[:, 1:, :, 2])
    return log_h, log_v


def merge_links(previous: torch.Tensor | None, log_new: torch.Tensor) -> torch.Tensor:
    """a_l = a_{l-1} + (1 - a_{l-1}) â_l, with â_l = exp(log_new); a_1 = â_1 when `previous` is None."""
    new = log_new.exp()
    if previous is None:
        return new
    return previous + (1.0 - previous) * new


def _span_log_sums(prefix: torch.Tensor) -> torch.Tensor:
    """Sum of the link logs between positions i and j: S_j - S_i if j >= i, else S_i - S_j.

    prefix: (..., m) prefix sums S -> (..., m, m).
    """
    diff = prefix.unsqueeze(-2) - prefix.unsqueeze(-1)  # [..., i, j] = S_j - S_i
    m = prefix.shape[-1]
    upper = torch.ones(m, m, dtype=torch.bool, device=prefix.device).triu()
    return torch.where(upper, diff, diff.transpose(-1, -2))


def _log_links(a: torch.Tensor) -> torch.Tensor:
    """log a clamped below at LOG_LINK_FLOOR."""
    return a.clamp_min(math.exp(LOG_LINK_FLOOR)).log()


def sequence_log_prior(a: torch.Tensor, link_valid: torch.Tensor | None = None) -> torch.Tensor:
    """log C_{i,j} = sum_{k=min(i,j)}^{max(i,j)-1} log a_{k,k+1}, -inf (C = 0) across an invalid link.

    a: (B, n-1) link probabilities -> (B, n, n).
    """
    prefix = F.pad(_log_links(a).cumsum(-1), (1, 0))  # (B, n)
    log_c = _span_log_sums(prefix)
    if link_valid is not None:
        breaks = F.pad((~link_valid).int().cumsum(-1), (1, 0))  # (B, n): invalid links before token i
        log_c = log_c.masked_fill(breaks.unsqueeze(-1) != breaks.unsqueeze(-2), float("-inf"))
    return log_c


def grid_log_prior(a_h: torch.Tensor, a_v: torch.Tensor) -> torch.Tensor:
    """log C on a patch grid = (log C_A + log C_B) / 2 over the two L-shaped paths (see the module docstring).

    a_h: (B, gh, gw-1) horizontal links; a_v: (B, gh-1, gw) vertical links.
    """
    batch, gh = a_h.shape[:2]
    gw = a_v.shape[2]
    h_prefix = F.pad(_log_links(a_h).cumsum(-1), (1, 0))  # (B, gh, gw)
    v_prefix = F.pad(_log_links(a_v).cumsum(-2), (0, 0, 1, 0))  # (B, gh, gw)
    row_span = _span_log_sums(h_prefix)  # (B, r, c1, c2)
    col_span = _span_log_sums(v_prefix.transpose(1, 2))  # (B, c, r1, r2)
    # indices of the result: (B, r1, c1, r2, c2)
    path_a = row_span.unsqueeze(3) + col_span.permute(0, 2, 3, 1).unsqueeze(2)
    path_b = col_span.permute(0, 2, 1, 3).unsqueeze(-1) + row_span.permute(0, 2, 1, 3).unsqueeze(1)
    return (0.5 * (path_a + path_b)).reshape(batch, gh * gw, gh * gw)


class HierarchyAwareAttention(nn.Module):
    """Multi-head self-attention with weights C * softmax(QK^T/sqrt(d_head)) (renormalize=False) or
    softmax(QK^T/sqrt(d_head) + log C) (renormalize=True).

    Parameter names match torch.nn.MultiheadAttention (in_proj_weight, in_proj_bias, out_proj), so an open_clip
    ResidualAttentionBlock's weights load directly; the link projections link_query / link_key are extra.
    """

    def __init__(self, width: int, heads: int, renormalize: bool = False):
        super().__init__()
        if width % heads:
            raise ClearglassError(f"hierarchy attention: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.renormalize = renormalize
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.link_query = nn.Linear(width, width)
        self.link_key = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, log_prior: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Attend x (B, n, D) under the span prior log C (B, n, n); key_valid (B, n) masks padded keys.

        The diagonal stays allowed, so a padded query attends to itself and its row stays finite.
        """
        batch, n, width = x.shape
        d_head = width // self.heads
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(batch, n, 3, self.heads, d_head).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, n, d_head)
        mask = _at_least_fp32(log_prior.unsqueeze(1))  # (B, 1, n, n) additive in log space
        if key_valid is not None:
            eye = torch.eye(n, dtype=torch.bool, device=x.device)
            allowed = key_valid.unsqueeze(1) | eye  # (B, n, n)
            key_mask = torch.zeros(allowed.shape, dtype=mask.dtype, device=x.device)
            key_mask = key_mask.masked_fill(~allowed, float("-inf")).unsqueeze(1)
        if self.renormalize:
            if key_valid is not None:
                mask = mask + key_mask
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        else:
            scores = _at_least_fp32(q @ k.transpose(-1, -2)) / math.sqrt(d_head)  # (B, heads, n, n)
            if key_valid is not None:
                scores = scores + key_mask
            weights = scores.softmax(-1) * mask.exp()
            out = weights.to(v.dtype) @ v
        return self.out_proj(out.transpose(1, 2).reshape(batch, n, width))


class HierarchyAwareBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x); C), then x + mlp(ln_2(x)); links are scored from ln_1(x).

    Submodule names match open_clip's ResidualAttentionBlock (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        grid_size: tuple[int, int] | None,
        num_prefix_tokens: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        renormalize: bool = False,
    ):
        super().__init__()
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.ln_1 = norm_layer(width)
        self.attn = HierarchyAwareAttention(width, heads, renormalize)
        self.ln_2 = norm_layer(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width))]
            )
        )

    def forward(
        self, x: torch.Tensor, previous: Links | None = None, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Links]:
        """x (B, n, D), previous links a_{l-1} (None in the first layer), valid (B, n) real tokens -> (x, links a_l)."""
        batch, n, _ = x.shape
        p = self.num_prefix_tokens
        h = self.ln_1(x)
        body = h[:, p:]
        lq, lk = self.attn.link_query(body), self.attn.link_key(body)
        if self.grid_size is None:
            body_valid = None if valid is None else valid[:, p:]
            log_new, link_valid = sequence_link_log_probs(lq, lk, body_valid)
            a = merge_links(None if previous is None else previous.horizontal, log_new).masked_fill(~link_valid, 0.0)
            links = Links(a, None)
            log_prior = sequence_log_prior(a, None if valid is None else link_valid)
        else:
            if valid is not None:
                raise ClearglassError("hierarchy attention: a key-padding mask is not supported on a patch grid")
            gh, gw = self.grid_size
            if n - p != gh * gw:
                raise ClearglassError(
                    f"hierarchy attention: got {n} tokens, expected {p} prefix + {gh}x{gw} grid = {p + gh * gw}"
                )
            log_h, log_v = grid_link_log_probs(lq.view(batch, gh, gw, -1), lk.view(batch, gh, gw, -1))
            links = Links(
                merge_links(None if previous is None else previous.horizontal, log_h),
                merge_links(None if previous is None else previous.vertical, log_v),
            )
            log_prior = grid_log_prior(links.horizontal, links.vertical)
        log_prior = F.pad(log_prior, (p, 0, p, 0))  # prefix rows/cols: C = 1
        x = x + self.attn(h, log_prior, valid)
        x = x + self.mlp(self.ln_2(x))
        return x, links


class HierarchyAwareTransformer(nn.Module):
    """A stack of HierarchyAwareBlocks threading the link probabilities a_{l-1} -> a_l from layer to layer.

    Drop-in for open_clip's `Transformer` (batch-first `forward(x, attn_mask=None)`, `resblocks`,
    `grad_checkpointing`; `load_state_dict(open_clip_transformer.state_dict(), strict=False)` loads everything but
    the link projections). grid_size=None: sequence mode (text), with `key_padding_mask` (B, n), True = real token.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        grid_size: tuple[int, int] | None = None,
        num_prefix_tokens: int = 1,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        renormalize: bool = False,
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.batch_first = True
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [
                HierarchyAwareBlock(
                    width, heads, grid_size, num_prefix_tokens, mlp_ratio, act_layer, norm_layer, renormalize
                )
                for _ in range(layers)
            ]
        )

    def get_cast_dtype(self) -> torch.dtype:
        """The dtype of the weights (open_clip's Transformer API)."""
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def forward_links(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[Links]]:
        """x (B, n, D) -> (output (B, n, D), the merged links a_l of every layer)."""
        links: list[Links] = []
        previous = None
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, previous = torch.utils.checkpoint.checkpoint(
                    block, x, previous, key_padding_mask, use_reentrant=False
                )
            else:
                x, previous = block(x, previous, key_padding_mask)
            links.append(previous)
        return x, links

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, n, D) -> (B, n, D); `attn_mask` exists for open_clip's signature and must be None."""
        if attn_mask is not None:
            raise ClearglassError("hierarchy attention: an explicit attn_mask is not supported (use key_padding_mask)")
        return self.forward_links(x, key_padding_mask)[0]


# ----------------------------------------------------------------------------------------------------------------
# model integration: the "hier_attention" key of a model config


HIER_ATTENTION_KEYS = {"vision", "text_extra_layers", "renormalize"}


def _hierarchy_vision_transformer(visual: nn.Module, renormalize: bool) -> HierarchyAwareTransformer:
    """A HierarchyAwareTransformer with the shape and weights of an open_clip VisionTransformer's `transformer`."""
    old = visual.transformer
    block = old.resblocks[0]
    if not isinstance(block.attn, nn.MultiheadAttention) or not isinstance(block.ls_1, nn.Identity):
        raise ClearglassError(
            "model config hier_attention.vision: expected open_clip's default ViT blocks "
            f"(nn.MultiheadAttention, no layer scale), got {type(block).__name__}"
        )
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise ClearglassError("model config hier_attention.vision: patch dropout breaks the patch grid; set it to 0")
    new = HierarchyAwareTransformer(
        old.width,
        old.layers,
        block.attn.num_heads,
        grid_size=tuple(visual.grid_size),
        num_prefix_tokens=1,
        mlp_ratio=block.mlp.c_fc.out_features / old.width,
        act_layer=type(block.mlp.gelu),
        norm_layer=type(block.ln_1),
        renormalize=renormalize,
    )
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(".link_" not in k for k in missing):
        raise ClearglassError(
            f"model config hier_attention.vision: weights do not map onto the hierarchy-aware blocks "
            f"(missing {missing}, unexpected {unexpected})"
        )
    return new


def _run_text_hier_layers(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook on the Hugging Face text model: its token outputs go through the text tower's hier_layers."""
    valid = kwargs["attention_mask"].bool()  # (B, L) True = real token
    layers = module.clearglass_text_tower.hier_layers
    output.last_hidden_state = layers(output.last_hidden_state, key_padding_mask=valid)  # (B, L, width)
    return output


def apply_hier_attention(model: nn.Module, settings: dict) -> None:
    """Apply a model config's "hier_attention" settings to an open_clip CLIP model in place.

    settings: {"vision": bool (replace the ViT's transformer, keeping its weights), "text_extra_layers": int
    (hierarchy-aware layers on the Hugging Face text tower's token outputs, before pooling; their residual branches
    start at zero so the tower's output is unchanged at initialisation), "renormalize": bool (default false)}.
    """
    unknown = set(settings) - HIER_ATTENTION_KEYS
    if unknown:
        raise ClearglassError(
            f"model config hier_attention: unknown keys {sorted(unknown)}, expected {sorted(HIER_ATTENTION_KEYS)}"
        )
    renormalize = bool(settings.get("renormalize", False))
    if settings.get("vision", False):
        visual = getattr(model, "visual", None)
        if not hasattr(visual, "transformer") or not hasattr(visual, "grid_size"):
            raise ClearglassError(
                f"model config hier_attention.vision: needs a ViT image tower, got {type(visual).__name__}"
            )
        visual.transformer = _hierarchy_vision_transformer(visual, renormalize)
    extra = int(settings.get("text_extra_layers", 0))
    if extra:
        text = getattr(model, "text", None)
        hf_model = getattr(text, "transformer", None)
        if hf_model is None or not hasattr(hf_model, "config"):
            raise ClearglassError("model config hier_attention.text_extra_layers: needs a Hugging Face text tower")
        if getattr(text.pooler, "use_pooler_output", False):
            raise ClearglassError(
                "model config hier_attention.text_extra_layers: the cls_pooler reads the HF pooler output, which "
                "bypasses the extra layers; use mean_pooler or max_pooler"
            )
        width, heads = hf_model.config.hidden_size, hf_model.config.num_attention_heads
        layers = HierarchyAwareTransformer(width, extra, heads, None, num_prefix_tokens=1, renormalize=renormalize)
        for block in layers.resblocks:
            nn.init.zeros_(block.attn.out_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.bias)
        text.hier_layers = layers  # on the text tower, outside hf_model, so HF tower locking leaves it trainable
        # a plain (unregistered) back-reference, so deepcopy and pickle keep the hook pointing at the copy's layers
        object.__setattr__(hf_model, "clearglass_text_tower", text)
        hf_model.register_forward_hook(_run_text_hier_layers, with_kwargs=True)
