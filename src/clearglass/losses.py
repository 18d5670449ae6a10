"""Grouped contrastive losses of CLEAR GLASS: outer (between groups) and inner (within a group) terms.

Features arrive as image and text tensors of shape (M groups, N pairs, D); pair n of group m is image
``image_features[m, n]`` with its caption ``text_features[m, n]``, and every image and text of a group
shows the same concept. Inside the loss everything runs in float32 with autocast disabled: features are
cast, L2-normalised, and the logits go through masking and logsumexp in float32.

Group ids are implicit in the layout: pair (m, n) belongs to group m. Internally a batch is flattened to
B = M*N rows with a (B,) label vector, which also carries arbitrary groupings (the level-2 groups of
``MultiLevelGroupedLoss``).

Distributed: when ``torch.distributed`` is initialised with world_size W > 1, features (and text
negatives) are all-gathered WITH gradients, rank r's groups become global groups r*M .. r*M+M-1, and
the loss value equals the single-process loss on the concatenated batch. The backward of the gather
sums the gradients of all ranks, so the gradient reaching rank r's own features is W times the
single-process gradient; DistributedDataParallel's mean over ranks then gives exactly the
single-process full-batch gradient for every parameter. With ``local_loss=True`` (as in open_clip)
each rank only computes the rows it owns (its images/texts/groups against all gathered columns) and
scales them so that the MEAN over ranks of the loss equals the full-batch loss; gradients after DDP's
mean are again exactly the full-batch gradients. All ranks must pass tensors of the same shape.

Self-regularisation (``self_regularisation``, ``add_self_regularisation``): an anti-forgetting term offered to every
loss of the registry, as in PromptSRC / KgCoOp: the distance of the fine-tuned model's features from the frozen base
model's features of the same batch, added to the returned dict as ``self_reg_loss`` and weighted into ``loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from clearglass.errors import ClearglassError

LN_100 = math.log(100.0)
NORM_EPS = 1e-12  # the floor of F.normalize
INNER_CHUNK_FLOATS = 1 << 22  # default size of one scaled_pairwise chunk, products plus logits: 16 MiB of float32


@dataclass
class _Batch:
    """Flattened, normalised, gathered features plus the rows this process owns the loss for."""

    images: Tensor  # (B, D) float32, L2-normalised, all ranks
    texts: Tensor  # (B, D)
    labels: Tensor  # (B,) int64 group id in 0..num_groups-1
    num_groups: int
    rows: slice  # pairs whose rows this process computes (all of them unless local_loss)
    world_scale: float  # W under local_loss, else 1: a mean over rows is world_scale * sum(owned) / total
    block: int | None  # N when group g is exactly rows g*N .. g*N+N-1 (level 1), else None

    def row_mean(self, owned_losses: Tensor, total: int) -> Tensor:
        """Mean over all `total` rows, computed from the owned ones: world_scale * sum(owned) / total."""
        return owned_losses.sum() * (self.world_scale / total)

    def group_weights(self) -> Tensor:
        """(G,) weight of each group's row in a mean over groups: world_scale * owned_pairs_g / pairs_g / G."""
        counts = torch.bincount(self.labels, minlength=self.num_groups).float()
        owned = torch.bincount(self.labels[self.rows], minlength=self.num_groups).float()
        return owned / counts * (self.world_scale / self.num_groups)


def _world() -> tuple[int, int]:
    """(rank, world_size) of the default process group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(x: Tensor) -> Tensor:
    """Concatenate `x` from all ranks along dim 0, with gradients flowing back to every rank."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


class _NormalizeRows(torch.autograd.Function):
    """F.normalize(x, dim=-1) of image and text features at once, with a hand-written backward.

    y = x / max(|x|, eps); dx = (dy - y (y . dy)) / |x|, or dy / eps where the norm is floored (autograd's
    generic backward of the same formula takes three times the kernels).
    """

    @staticmethod
    def forward(ctx, images: Tensor, texts: Tensor) -> tuple[Tensor, Tensor]:
        """Both (B, D) inputs with every row divided by max(its L2 norm, eps)."""
        outputs, saved = [], []
        for x in (images, texts):
            norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (B, 1)
            floored = norms.clamp_min(NORM_EPS)
            outputs.append(x / floored)
            saved += [floored, norms > NORM_EPS]
        ctx.save_for_backward(*outputs, *saved)
        return outputs[0], outputs[1]

    @staticmethod
    def backward(ctx, dimages: Tensor, dtexts: Tensor) -> tuple[Tensor, Tensor]:
        """(dy - y (y . dy)) / max(|x|, eps), without the radial projection where the norm is floored."""
        images, texts, image_norms, image_unfloored, text_norms, text_unfloored = ctx.saved_tensors
        grads = []
        for y, dy, norms, unfloored in ((images, dimages, image_norms, image_unfloored),
                                        (texts, dtexts, text_norms, text_unfloored)):
            radial = (y * dy).sum(-1, keepdim=True).mul_(unfloored)  # (B, 1)
            grads.append((dy - y * radial).div_(norms))
        return grads[0], grads[1]


def _check_features(image_features: Tensor, text_features: Tensor) -> None:
    """Raise ClearglassError unless both are floating tensors of the same (M, N, D) shape."""
    for name, x in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ClearglassError(f"{name}: expected a floating-point torch.Tensor (M groups, N pairs, D), "
                                  f"got {type(x).__name__}"
                                  + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
        if x.dim() != 3 or min(x.shape) < 1:
            raise ClearglassError(f"{name}: expected a 3-D tensor (M groups, N pairs, D) with no empty axis, "
                                  f"got shape {tuple(x.shape)}")
    if image_features.shape != text_features.shape:
        raise ClearglassError(f"image_features {tuple(image_features.shape)} and text_features "
                              f"{tuple(text_features.shape)}: expected the same (M groups, N pairs, D) shape")


def _check_negatives(text_negatives: Tensor, dim: int) -> None:
    """Raise ClearglassError unless text_negatives is a floating (K, D) tensor."""
    if not isinstance(text_negatives, Tensor) or not text_negatives.is_floating_point() or text_negatives.dim() != 2 \
            or text_negatives.shape[1] != dim:
        shape = tuple(text_negatives.shape) if isinstance(text_negatives, Tensor) else type(text_negatives).__name__
        raise ClearglassError(f"text_negatives: expected a floating (K, D={dim}) tensor, got {shape}")


def _raise_non_finite(name: str, x: Tensor) -> None:
    """Raise ClearglassError naming the first non-finite row of `x` (leading axes are its index), if there is one."""
    bad = ~torch.isfinite(x)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0][:-1])
        raise ClearglassError(f"{name}: expected finite features, found NaN/inf at index {index}"
                              " (indices over all ranks when distributed)")


def _centroids(features: Tensor, labels: Tensor, num_groups: int) -> Tensor:
    """(G, D) normalised group centroids: normalize(sum of the group's rows) (= normalised mean)."""
    sums = features.new_zeros(num_groups, features.shape[1]).index_add_(0, labels, features)
    return F.normalize(sums, dim=-1)


def _chunks(owned: slice, size: int) -> list[slice]:
    """`owned` cut into consecutive slices of `size` (the last one may be shorter)."""
    return [slice(start, min(start + size, owned.stop)) for start in range(owned.start, owned.stop, size)]


class _MaskedPairwiseOuter(torch.autograd.Function):
    """pairwise_outer's value on any grouping (level 2), with a hand-written backward: one stacked (2, R, B)
    logsumexp per term, the positives of a row given by a (R, B) mask."""

    @staticmethod
    def forward(ctx, images: Tensor, texts: Tensor, scale: Tensor | float, negatives: Tensor | None,
                positive: Tensor, rows: slice, weight: float) -> Tensor:
        """weight * sum over the owned rows of both directions of lse_all - lse_positives."""
        own_images = images[rows]  # (R, D)
        cos = torch.mm(own_images, texts.T)  # (R, B) image -> text
        full = rows == slice(0, images.shape[0])
        t2i = cos.T if full else torch.mm(texts[rows], images.T)  # (R, B) text -> image
        logits = torch.stack([cos, t2i]).mul_(scale)  # (2 directions, R, B)
        lse = logits.logsumexp(-1)  # (2, R)
        neg_logits = None
        if negatives is not None:  # extra image -> text denominator columns
            neg_logits = torch.mm(own_images, negatives.T).mul_(scale)  # (R, K)
            lse[0] = torch.logaddexp(lse[0], neg_logits.logsumexp(-1))
        masked = logits.masked_fill(~positive, -math.inf)  # (2, R, B)
        lse_positive = masked.logsumexp(-1)  # (2, R)
        ctx.save_for_backward(images, texts, negatives, logits, lse, masked, lse_positive, neg_logits)
        ctx.scale, ctx.rows, ctx.weight, ctx.full = scale, rows, weight, full
        return (lse.sum() - lse_positive.sum()) * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        """d loss / d logits = weight * (softmax_all - softmax_positives), then through the similarity matmuls."""
        images, texts, negatives, logits, lse, masked, lse_positive, neg_logits = ctx.saved_tensors
        scale, rows, weight = ctx.scale, ctx.rows, grad * ctx.weight
        dlogits = (logits - lse[..., None]).exp_()  # (2, R, B) softmax_all, minus softmax_positives
        dlogits.sub_((masked - lse_positive[..., None]).exp_()).mul_(weight)
        dneg = None if neg_logits is None else (neg_logits - lse[0, :, None]).exp_().mul_(weight)  # (R, K)
        dscale = None
        if ctx.needs_input_grad[2]:  # d/dscale of scale * cos = logits / scale
            dscale = (dlogits * logits).sum() + (0.0 if dneg is None else (dneg * neg_logits).sum())
            dscale = dscale / scale
        own_images = images[rows]
        if ctx.full:  # i2t and t2i are one (B, B) matrix and its transpose
            dcos = (dlogits[0] + dlogits[1].T).mul_(scale)  # (B, B)
            dimages, dtexts = torch.mm(dcos, texts), torch.mm(dcos.T, own_images)
        else:
            di2t, dt2i = dlogits[0] * scale, dlogits[1] * scale  # (R, B) each
            dimages, dtexts = torch.mm(dt2i.T, texts[rows]), torch.mm(di2t.T, own_images)
            dimages[rows] += torch.mm(di2t, texts)
            dtexts[rows] += torch.mm(dt2i, images)
        dnegatives = None
        if dneg is not None:
            dneg = dneg.mul_(scale)
            dimages[rows] += torch.mm(dneg, negatives)
            dnegatives = torch.mm(dneg.T, own_images)
        return dimages, dtexts, dscale, dnegatives, None, None, None


def _tile_blocks(logits: Tensor, tile: slice, block: int) -> Tensor:
    """(N, N, G_t) view of a tile's (T, B) image -> text logits: its groups' images against their texts, [i, j, o]."""
    groups = (tile.stop - tile.start) // block
    return logits[:, tile].view(groups, block, groups, block).diagonal(0, 0, 2)


def _tile_lse(queries: Tensor, keys: Tensor, scale: Tensor | float,
              extra: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """A tile's (T, C) logits scale * q . k, each row's log-sum-exp over them and the `extra` keys' logits, and
    those (T, K) extra logits (None without `extra`)."""
    logits = torch.mm(queries, keys.T).mul_(scale)  # (T, C)
    lse, extra_logits = logits.logsumexp(1), None  # (T,)
    if extra is not None:
        extra_logits = torch.mm(queries, extra.T).mul_(scale)  # (T, K)
        lse = torch.logaddexp(lse, extra_logits.logsumexp(1))
    return logits, lse, extra_logits


def _tile_grads(queries: Tensor, keys: Tensor, scale: Tensor | float, weight: Tensor, row_lse: Tensor,
                column_lse: Tensor | None, dqueries: Tensor, dkeys: Tensor, want_dscale: bool,
                logits: Tensor | None = None, positives: tuple[slice, int, Tensor] | None = None) -> Tensor | float:
    """Add a tile's gradients to dqueries (T, D) and dkeys (C, D); return its d/dscale (0 unless wanted).

    d loss / d logits = weight * (softmax over the row, plus softmax over the column where column_lse is given,
    minus both directions' softmax over the positives where `positives` = (tile, N, (2, N, G_t) log-sum-exps of the
    tile's diagonal blocks) is given). The tile's logits are recomputed unless given.
    """
    logits = torch.mm(queries, keys.T).mul_(scale) if logits is None else logits  # (T, C)
    dlogits = (logits - row_lse[:, None]).exp_()
    if column_lse is not None:
        dlogits.add_((logits - column_lse[None, :]).exp_())
    if positives is not None:
        tile, block, lse_positive = positives
        blocks = _tile_blocks(logits, tile, block)  # (N, N, G_t) [image i, text j, o]
        # (2, N, N, G_t) softmax over the positives: [0, i, j] over texts j, [1, j, i] over images i
        softmax = (torch.stack([blocks, blocks.transpose(0, 1)]) - lse_positive[:, :, None, :]).exp_()
        _tile_blocks(dlogits, tile, block).sub_(softmax[0]).sub_(softmax[1].transpose(0, 1))
    dscale = (dlogits * logits).sum() * (weight / scale) if want_dscale else 0.0  # d/dscale of scale * cos
    dlogits.mul_(weight * scale)
    dqueries.addmm_(dlogits, keys)
    dkeys.addmm_(dlogits.T, queries)
    return dscale


class _BlockPairwiseOuter(torch.autograd.Function):
    """pairwise_outer on equal contiguous groups (level 1), `tile` owned rows at a time, as Inf-CL tiles CLIP.

    Tiles hold whole groups, so a tile of image rows against all texts holds its groups' positives as diagonal
    (N, N) blocks, for both directions. With all rows owned, the tile gives its rows' image->text lse and adds its
    columns' lse into the text->image one (logaddexp): one (T, B) matrix serves both directions and nothing is
    transposed. Under local_loss the owned text rows are tiled against all images as well. With several tiles the
    forward keeps log-sum-exps only and the backward recomputes each tile's logits (memory O(T*B)); a single tile
    keeps its logits, those against the caption negatives too, for the backward.
    """

    @staticmethod
    def forward(ctx, images: Tensor, texts: Tensor, scale: Tensor | float, negatives: Tensor | None, block: int,
                rows: slice, weight: float, tile: int) -> Tensor:
        """weight * sum over the owned rows of both directions of lse_all - lse_positives."""
        full, tiles, owned = rows == slice(0, images.shape[0]), _chunks(rows, tile), rows.stop - rows.start
        lse = images.new_empty(2, owned)  # (2 directions, R)
        lse_positive = images.new_empty(2, block, owned // block)  # (2 directions, N, G_o) [dir, i or j, o]
        for t in tiles:
            local = slice(t.start - rows.start, t.stop - rows.start)
            i2t, lse[0, local], i2n = _tile_lse(images[t], texts, scale, negatives)  # (T, B), (T, K) or None
            blocks = _tile_blocks(i2t, t, block)  # (N, N, G_t) [i, j, o]; both directions in one logsumexp:
            groups = slice(local.start // block, local.stop // block)
            lse_positive[:, :, groups] = torch.stack([blocks, blocks.transpose(0, 1)]).logsumexp(2)
            if full:
                column = i2t.logsumexp(0)  # (B,) this tile's share of text -> image
                lse[1] = column if t.start == rows.start else torch.logaddexp(lse[1], column)
                t2i = None
            else:
                t2i, lse[1, local], _ = _tile_lse(texts[t], images, scale, None)  # (T, B) text -> image
        kept = [i2t, t2i, i2n] if len(tiles) == 1 else []  # one tile: its logits (and negatives') serve the backward
        ctx.save_for_backward(images, texts, negatives, lse, lse_positive, *kept)
        ctx.scale, ctx.block, ctx.rows, ctx.weight, ctx.tiles, ctx.full = scale, block, rows, weight, tiles, full
        return (lse.sum() - lse_positive.sum()) * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        """Per tile, d loss / d logits = weight * (softmax_all - softmax_positives) of both directions."""
        images, texts, negatives, lse, lse_positive, *kept = ctx.saved_tensors
        scale, rows, block, weight = ctx.scale, ctx.rows, ctx.block, grad * ctx.weight
        i2t, t2i, i2n = kept or (None, None, None)
        dimages, dtexts = torch.zeros_like(images), torch.zeros_like(texts)
        dnegatives = None if negatives is None else torch.zeros_like(negatives)
        dscale, want = 0.0, ctx.needs_input_grad[2]
        for t in ctx.tiles:
            local = slice(t.start - rows.start, t.stop - rows.start)
            positives = (t, block, lse_positive[:, :, local.start // block:local.stop // block])
            dscale += _tile_grads(images[t], texts, scale, weight, lse[0, local], lse[1] if ctx.full else None,
                                  dimages[t], dtexts, want, i2t, positives)
            if negatives is not None:
                dscale += _tile_grads(images[t], negatives, scale, weight, lse[0, local], None, dimages[t], dnegatives,
                                      want, i2n)
            if not ctx.full:
                dscale += _tile_grads(texts[t], images, scale, weight, lse[1, local], None, dtexts[t], dimages, want,
                                      t2i)
        return dimages, dtexts, dscale if want else None, dnegatives, None, None, None, None


def pairwise_outer(b: _Batch, scale: Tensor | float, negatives: Tensor | None, chunk: int | None = None) -> Tensor:
    """Multi-positive InfoNCE, symmetric: mean_i -[lse_{j: g_j=g_i} s_ij - lse_j s_ij], s = scale * cos.

    Equal contiguous groups (level 1) run _BlockPairwiseOuter, `chunk` groups of rows at a time when given.
    """
    weight = 0.5 * b.world_scale / b.labels.numel()
    if b.block is not None:
        tile = b.rows.stop - b.rows.start if chunk is None else chunk * b.block
        return _BlockPairwiseOuter.apply(b.images, b.texts, scale, negatives, b.block, b.rows, weight, tile)
    positive = b.labels[b.rows, None] == b.labels[None, :]  # (R rows, B columns)
    return _MaskedPairwiseOuter.apply(b.images, b.texts, scale, negatives, positive, b.rows, weight)


def clip_outer(b: _Batch, scale: Tensor | float, negatives: Tensor | None, chunk: int | None = None) -> Tensor:
    """Standard symmetric CLIP loss, one positive per row (the pair's own caption/image).

    With `chunk` and equal contiguous groups, computed `chunk` groups of rows at a time: the tiled pairwise loss
    with every pair its own group.
    """
    if chunk is not None and b.block is not None:
        return _BlockPairwiseOuter.apply(b.images, b.texts, scale, negatives, 1, b.rows,
                                         0.5 * b.world_scale / b.labels.numel(), chunk * b.block)
    target = torch.arange(b.rows.start, b.rows.stop, device=b.labels.device)  # (R,)
    i2t = scale * (b.images[b.rows] @ b.texts.T)  # (R, B)
    t2i = scale * (b.texts[b.rows] @ b.images.T)
    if negatives is not None:
        i2t = torch.cat([i2t, scale * (b.images[b.rows] @ negatives.T)], dim=1)
    loss_i = F.cross_entropy(i2t, target, reduction="none")
    loss_t = F.cross_entropy(t2i, target, reduction="none")
    total = b.labels.numel()
    return 0.5 * (b.row_mean(loss_i, total) + b.row_mean(loss_t, total))


def centroid_outer(b: _Batch, scale: Tensor | float) -> Tensor:
    """Symmetric CLIP loss between normalised image and text group centroids (G x G)."""
    image_c = _centroids(b.images, b.labels, b.num_groups)  # (G, D)
    text_c = _centroids(b.texts, b.labels, b.num_groups)
    logits = scale * (image_c @ text_c.T)  # (G, G)
    target = torch.arange(b.num_groups, device=logits.device)
    per_group = F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")
    return 0.5 * (per_group * b.group_weights()).sum()


def _product_norms(images: Tensor, texts: Tensor) -> Tensor:
    """(G, N, N) |a_i (x) b_j| of each group's image/text pairs, = sqrt((a*a) @ (b*b)^T), floored like F.normalize."""
    squared = torch.bmm(images.square(), texts.square().transpose(1, 2))  # (G, N, N)
    return squared.clamp_min(NORM_EPS**2).sqrt()


def _product_centroids(images: Tensor, texts: Tensor, norms: Tensor) -> Tensor:
    """(G, D) normalize(sum_ij a_i (x) b_j / |a_i (x) b_j|), summed as sum_i a_i (x) (W b)_i with W = 1/norms."""
    return F.normalize((images * torch.bmm(norms.reciprocal(), texts)).sum(1), dim=-1)


def _products(b: _Batch) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised image(x)text products of every (i, j) in the same group: (P, D), their labels and image rows."""
    same = b.labels[:, None] == b.labels[None, :]  # (B, B)
    image_idx, text_idx = same.nonzero(as_tuple=True)  # (P,) each, P = sum_g n_g^2
    products = F.normalize(b.images[image_idx] * b.texts[text_idx], dim=-1)  # (P, D)
    return products, b.labels[image_idx], image_idx


def _owned(index: Tensor, rows: slice) -> Tensor:
    """Boolean mask of entries of `index` that fall in `rows`."""
    return (index >= rows.start) & (index < rows.stop)


def pairwise_inner(b: _Batch) -> Tensor:
    """Mean over within-group products p_ij of 1 - cos(p_ij, c_g), c_g = normalize(sum of the group's p_ij)."""
    if b.block is not None:  # equal contiguous groups: p_ij . c = ((a_i (x) c) . b_j) / |a_i (x) b_j|, no (G, N, N, D)
        n = b.block
        images, texts = b.images.view(-1, n, b.images.shape[1]), b.texts.view(-1, n, b.texts.shape[1])  # (G, N, D)
        norms = _product_norms(images, texts)  # (G, N, N)
        centroids = _product_centroids(images, texts, norms)  # (G, D)
        owned = slice(b.rows.start // n, b.rows.stop // n)
        cos = torch.bmm(images[owned] * centroids[owned, None, :], texts[owned].transpose(1, 2)) / norms[owned]
        return b.row_mean(1.0 - cos, b.labels.numel() * n)
    products, labels, image_idx = _products(b)
    centroids = _centroids(products, labels, b.num_groups)  # (G, D)
    owned = _owned(image_idx, b.rows)
    cos = (products[owned] * centroids[labels[owned]]).sum(-1)
    return b.row_mean(1.0 - cos, labels.numel())


def _inner_chunk(groups: int, n: int, d: int, chunk: int | None) -> int:
    """Groups per scaled_pairwise chunk: `chunk`, or as many as keep products and logits within INNER_CHUNK_FLOATS."""
    return chunk if chunk is not None else max(1, INNER_CHUNK_FLOATS // (n * n * (d + groups)))


def _product_logits(images: Tensor, texts: Tensor, inv: Tensor, centroids: Tensor,
                    tau_inner: float) -> tuple[Tensor, Tensor]:
    """One chunk's unnormalised products a_mi * b_mj, (G_c*N*N, D), and their logits p_mij . c_k / tau', (G, G_c*N*N).

    p_mij . c_k = ((a_mi * b_mj) . c_k) / |a_mi * b_mj|: one matmul of the centroids against the products.
    """
    products = (images[:, :, None, :] * texts[:, None, :, :]).view(-1, images.shape[-1])  # (G_c*N*N, D) [m i j]
    logits = torch.mm(centroids, products.T).mul_(inv.reshape(1, -1) * (1.0 / tau_inner))  # (G, G_c*N*N) [k, m i j]
    return products, logits


def _product_logit_grads(images: Tensor, texts: Tensor, inv: Tensor, centroids: Tensor, lse: Tensor,
                         tau_inner: float, weight: Tensor, chunks: list[slice], kept: tuple[Tensor, Tensor] | None,
                         grads: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    """Add the gradients of weight * tau' * sum lse_k(p_mij . c_k / tau') over the chunks' products to `grads`.

    `grads` holds d/d images, texts (G, N, D), the inverse product norms (G, N, N) and the centroids (G, D). Each
    chunk's products and logits are recomputed, or come from `kept` when one chunk holds them all; `weight` already
    holds the 1/tau' of the logits.
    """
    first, (n, d) = chunks[0].start, images.shape[1:]
    dimages, dtexts, dinv, dcentroids = grads
    for c in chunks:
        a, b, v = images[c], texts[c], inv[c]  # (G_c, N, D), (G_c, N, D), (G_c, N, N)
        products, logits = kept if kept is not None else _product_logits(a, b, v, centroids, tau_inner)
        flat = slice((c.start - first) * n * n, (c.stop - first) * n * n)
        prob = (logits - lse[None, flat]).exp_().mul_(weight)  # (G, G_c*N*N) weight * softmax over k
        # logits = dots * v / tau', so d/dv = sum_k prob * dots = sum_k prob * logits * tau' / v
        dinv[c].addcdiv_((prob * logits).sum(0).view_as(v), v, value=tau_inner)
        ddots = prob.mul_(v.reshape(1, -1))  # (G, G_c*N*N) d/d of the dots c_k . products
        dcentroids.addmm_(ddots, products)
        # recomputed products are spent: their buffer takes their gradient (kept ones may serve a retained graph)
        spent = products if kept is None else None
        dproducts = torch.mm(ddots.T, centroids, out=spent).view(-1, n, n, d)  # (G_c, N, N, D) [m i j]
        da, db = dimages[c], dtexts[c]  # (G_c, N, D)
        # sum_j dP_mij * b_mj and sum_i dP_mij * a_mi, one pair index at a time: no (G_c, N, N, D) temporary
        for dp_j, dp_i, b_j, a_i in zip(dproducts.unbind(2), dproducts.unbind(1), b[:, :, None].unbind(1),
                                        a[:, :, None].unbind(1)):
            da.addcmul_(dp_j, b_j)
            db.addcmul_(dp_i, a_i)


class _ScaledPairwiseInner(torch.autograd.Function):
    """scaled_pairwise_inner on equal contiguous groups, with a hand-written backward, in chunks of owned groups.

    No tensor grows past one chunk's products and logits, (G_c*N*N, D) and (G, G_c*N*N), besides O(B*N) ones: the
    forward keeps each product's log-sum-exp over the centroids and the backward recomputes the chunk's logits
    (or, when one chunk holds every owned group, the forward keeps them).
    """

    @staticmethod
    def forward(ctx, images: Tensor, texts: Tensor, tau_inner: float, owned: slice, weight: float,
                chunk: int) -> Tensor:
        """weight * sum over owned products p_mij of lse_k(p_mij . c_k / tau') - p_mij . c_m / tau'."""
        images_sq, texts_sq = images.square(), texts.square()  # (G, N, D)
        squared = torch.bmm(images_sq, texts_sq.transpose(1, 2))  # (G, N, N) |a_i (x) b_j|^2
        inv = squared.clamp_min(NORM_EPS**2).rsqrt_()  # (G, N, N) 1 / |a_i (x) b_j|, floored like F.normalize
        summed = torch.bmm(inv, texts)  # (G, N, D) sum_j b_j / |a_i (x) b_j|
        sums = (images * summed).sum(1)  # (G, D) sum_ij p_ij, the unnormalised product centroid
        norms = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)  # (G, 1)
        centroids = sums / norms.clamp_min(NORM_EPS)  # (G, D)
        chunks = _chunks(owned, chunk)
        kept = _product_logits(images[owned], texts[owned], inv[owned], centroids, tau_inner) \
            if len(chunks) == 1 else None
        lse = kept[1].logsumexp(0) if kept is not None else torch.cat(
            [_product_logits(images[c], texts[c], inv[c], centroids, tau_inner)[1].logsumexp(0) for c in chunks])
        # sum_ij p_mij . c_m = c_m . sums_m: the target logits summed without gathering them
        target = (centroids[owned] * sums[owned]).sum() / tau_inner
        ctx.save_for_backward(images, texts, images_sq, texts_sq, squared, inv, summed, sums, norms, centroids, lse,
                              *(kept or (None, None)))
        ctx.tau_inner, ctx.owned, ctx.weight, ctx.chunks = tau_inner, owned, weight, chunks
        return (lse.sum() - target) * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        """Chain rule through the chunks' logits, centroids (normalize), the inverse product norms and squared norms."""
        (images, texts, images_sq, texts_sq, squared, inv, summed, sums, norms, centroids, lse, products,
         logits) = ctx.saved_tensors
        owned, weight = ctx.owned, grad * (ctx.weight / ctx.tau_inner)
        kept = None if products is None else (products, logits)
        dimages, dtexts = torch.zeros_like(images), torch.zeros_like(texts)  # (G, N, D)
        dinv, dcentroids = torch.zeros_like(inv), torch.zeros_like(centroids)  # (G, N, N), (G, D)
        _product_logit_grads(images, texts, inv, centroids, lse, ctx.tau_inner, weight, ctx.chunks, kept,
                             (dimages, dtexts, dinv, dcentroids))
        dcentroids[owned].sub_(weight * sums[owned])  # the target term - c_m . sums_m / tau'
        # centroids = sums / max(|sums|, eps): project out the radial part where the norm is not floored
        radial = (dcentroids * centroids).sum(-1, keepdim=True) * (norms > NORM_EPS)
        dsums = (dcentroids - centroids * radial) / norms.clamp_min(NORM_EPS)  # (G, D)
        dsums[owned].sub_(weight * centroids[owned])
        dsummed = dsums[:, None, :] * images  # (G, N, D)
        dimages.addcmul_(dsums[:, None, :], summed)
        dtexts.baddbmm_(inv.transpose(1, 2), dsummed)
        dinv.baddbmm_(dsummed, texts.transpose(1, 2))
        # inv = max(squared, eps^2)^(-1/2); d/dsquared = -inv^3 / 2 (0 where floored); the 2 of d(x^2) folded in
        dsquared = dinv.mul_(inv.pow(3)).masked_fill_(squared < NORM_EPS**2, 0.0)  # (G, N, N) -2 dloss/dsquared
        dimages.addcmul_(images, torch.bmm(dsquared, texts_sq), value=-1.0)
        dtexts.addcmul_(texts, torch.bmm(dsquared.transpose(1, 2), images_sq), value=-1.0)
        return dimages, dtexts, None, None, None, None


def scaled_pairwise_inner(b: _Batch, tau_inner: float, chunk: int | None = None) -> Tensor:
    """Mean over within-group products p_ij of cross-entropy of p_ij . c_k / tau' over all G centroids, target g.

    Equal contiguous groups run `chunk` owned groups at a time (None: as many as INNER_CHUNK_FLOATS allows).
    """
    if b.block is not None:  # equal contiguous groups: never materialise the (G, N, N, D) products
        n = b.block
        images, texts = b.images.view(-1, n, b.images.shape[1]), b.texts.view(-1, n, b.texts.shape[1])  # (G, N, D)
        owned = slice(b.rows.start // n, b.rows.stop // n)
        size = _inner_chunk(b.num_groups, n, images.shape[2], chunk)
        return _ScaledPairwiseInner.apply(images, texts, tau_inner, owned, b.world_scale / (b.labels.numel() * n), size)
    products, labels, image_idx = _products(b)
    centroids = _centroids(products, labels, b.num_groups)  # (G, D)
    owned = _owned(image_idx, b.rows)
    logits = products[owned] @ centroids.T / tau_inner  # (P_owned, G)
    return b.row_mean(F.cross_entropy(logits, labels[owned], reduction="none"), labels.numel())


def centroid_inner(b: _Batch) -> Tensor:
    """Per modality, mean of 1 - cos(x, own-group centroid of that modality); images and texts averaged."""
    labels = b.labels[b.rows]
    terms = []
    for features in (b.images, b.texts):
        centroids = _centroids(features, b.labels, b.num_groups)  # (G, D)
        cos = (features[b.rows] * centroids[labels]).sum(-1)
        terms.append(b.row_mean(1.0 - cos, b.labels.numel()))
    return 0.5 * (terms[0] + terms[1])


def scaled_centroid_inner(b: _Batch, tau_inner: float) -> Tensor:
    """Per modality, cross-entropy of x . c_k / tau' over all G same-modality centroids; images and texts averaged."""
    labels = b.labels[b.rows]
    terms = []
    for features in (b.images, b.texts):
        centroids = _centroids(features, b.labels, b.num_groups)  # (G, D)
        logits = features[b.rows] @ centroids.T / tau_inner  # (R, G)
        terms.append(b.row_mean(F.cross_entropy(logits, labels, reduction="none"), b.labels.numel()))
    return 0.5 * (terms[0] + terms[1])


# ----------------------------------------------------------------------------------------------------------------
# the outer and inner terms by name (what ``outer`` and ``inner`` name), and the one check of every loss setting


@dataclass(frozen=True)
class Term:
    """An outer or inner term by name: its value on a prepared batch under a loss's settings (outer_scale, chunk,
    tau_inner), what the batch needs for it to have a negative ("groups": M >= 2 over all ranks, "pairs":
    M*N >= 2, None: nothing), and whether text negatives enter it (outer terms with per-image rows)."""

    compute: Callable[[GroupedContrastiveLoss, _Batch, Tensor | None], Tensor]
    needs: str | None
    takes_negatives: bool = False


OUTER_TERMS: dict[str, Term] = {
    "pairwise": Term(lambda loss, b, neg: pairwise_outer(b, loss.outer_scale(), neg, loss.chunk), "groups", True),
    "centroid": Term(lambda loss, b, _: centroid_outer(b, loss.outer_scale()), "groups"),
    "clip": Term(lambda loss, b, neg: clip_outer(b, loss.outer_scale(), neg, loss.chunk), "pairs", True),
}
INNER_TERMS: dict[str, Term] = {
    "pairwise": Term(lambda loss, b, _: pairwise_inner(b), None),
    "scaled_pairwise": Term(lambda loss, b, _: scaled_pairwise_inner(b, loss.tau_inner, loss.chunk), "groups"),
    "centroid": Term(lambda loss, b, _: centroid_inner(b), None),
    "scaled_centroid": Term(lambda loss, b, _: scaled_centroid_inner(b, loss.tau_inner), "groups"),
}
NEGATIVE_OUTERS = " or ".join(repr(n) for n, t in OUTER_TERMS.items() if t.takes_negatives)  # for messages


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_term(name: str, value: object, terms: dict[str, Term], optional: bool) -> None:
    if not (isinstance(value, str) and value in terms) and not (optional and value is None):
        raise ClearglassError(f"{name}: expected one of {tuple(terms)}{' or None' if optional else ''}, got {value!r}")


def _check_temperature(name: str, value: object) -> None:
    if not (_number(value) and value > 0):
        raise ClearglassError(f"{name}: expected a finite temperature > 0, got {value!r}")


def _check_weight(name: str, value: object) -> None:
    if not (_number(value) and value >= 0):
        raise ClearglassError(f"{name}: expected a finite weight >= 0, got {value!r}")


def _check_fraction(name: str, value: object) -> None:
    if not (_number(value) and 0.0 <= value <= 1.0):
        raise ClearglassError(f"{name}: expected a weight in [0, 1], got {value!r}")


def _check_chunk(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ClearglassError(f"{name}: expected None (null in JSON: the outer term untiled) or a number of groups "
                              f">= 1 per tile, got {value!r}")


SETTING_CHECKS: dict[str, Callable[[str, object], None]] = {
    "outer": lambda name, value: _check_term(name, value, OUTER_TERMS, optional=False),
    "inner": lambda name, value: _check_term(name, value, INNER_TERMS, optional=True),
    "alpha": _check_fraction,
    "tau": _check_temperature,
    "tau_inner": _check_temperature,
    "chunk": _check_chunk,
    "instance_weight": _check_weight,
    "level1_weight": _check_weight,
    "level2_weight": _check_weight,
    "self_reg": _check_weight,
}


def check_settings(settings: Mapping[str, object]) -> None:
    """Raise ClearglassError naming the first loss setting out of range (the losses' constructors and the training
    config's ``loss`` section both check here; names without a check, e.g. ``kind``, pass)."""
    for name, value in settings.items():
        if name in SETTING_CHECKS:
            SETTING_CHECKS[name](name, value)


class GroupedContrastiveLoss(nn.Module):
    """CLEAR GLASS loss: loss = alpha * outer + (1 - alpha) * inner on (M groups, N pairs, D) features.

    outer: "pairwise" (multi-positive InfoNCE, all pairs of a group are positives), "centroid" (CLIP loss on
    group centroids), "clip" (standard CLIP loss, the baseline). inner: "pairwise", "scaled_pairwise",
    "centroid", "scaled_centroid" or None (outer only: loss == outer_loss and the "inner_loss" key is absent).
    tau is the outer temperature (logits = cos / tau); with learn_tau=True it becomes an nn.Parameter
    `logit_scale` initialised at ln(1/tau), used as exp(min(logit_scale, ln 100)). tau_inner is tau' of the
    scaled inner losses. forward(image_features, text_features, text_negatives=None) returns
    {"loss", "outer_loss", "inner_loss"}; text_negatives (K, D) are extra captions (synthetic hard negatives)
    added to the image->text denominator of the pairwise/clip outer loss, never positives.

    Memory (B = M*N pairs over all ranks, R the rows this process owns): the scaled_pairwise inner term always runs
    in chunks of owned groups, so it holds no more than one chunk's products and logits (INNER_CHUNK_FLOATS by
    default). chunk=None computes the pairwise/clip outer term whole: a (B, B) float32 logit matrix kept for the
    backward (two (R, B) ones under local_loss; 'clip' holds two, as open_clip's ClipLoss does). chunk=k (groups)
    also tiles the outer term k groups (k*N rows) at a time, as Inf-CL does: the forward accumulates log-sum-exps
    over the tiles and the backward recomputes each tile's logits, so memory is O(k*N*B) and the inner chunks are k
    groups; the cost is about one more (R, B, D) matmul per term.
    The result is the same (up to float32 summation order) with or without chunk, under DDP and local_loss too.
    Untiled whatever chunk says: the level-2 terms of MultiLevelGroupedLoss (groups of unequal sizes) and the
    centroid terms, whose logits are at most (R, G).
    """

    def __init__(self, outer: str = "pairwise", inner: str | None = "scaled_pairwise", alpha: float = 0.7,
                 tau: float = 0.1, tau_inner: float = 0.07, learn_tau: bool = False, local_loss: bool = False,
                 chunk: int | None = None) -> None:
        super().__init__()
        check_settings({"outer": outer, "inner": inner, "alpha": alpha, "tau": tau, "tau_inner": tau_inner,
                        "chunk": chunk})
        self.outer, self.inner, self.alpha, self.chunk = outer, inner, float(alpha), chunk
        self.tau, self.tau_inner, self.local_loss = float(tau), float(tau_inner), local_loss
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau))) if learn_tau else None

    def outer_scale(self) -> Tensor | float:
        """The outer logit scale: 1/tau, or exp(min(logit_scale, ln 100)) when learnt."""
        if self.logit_scale is None:
            return 1.0 / self.tau
        return self.logit_scale.float().clamp(max=LN_100).exp()

    def forward(self, image_features: Tensor, text_features: Tensor,
                text_negatives: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms of (M, N, D) image and text features (plus optional (K, D) text negatives)."""
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            batch, negatives = _prepare(image_features, text_features, text_negatives, self.local_loss)
            self.check_batch(batch, negatives)
            return self.terms(batch, negatives)

    def check_batch(self, b: _Batch, negatives: Tensor | None) -> None:
        """Raise ClearglassError when the gathered batch cannot give this loss a negative."""
        terms = [OUTER_TERMS[self.outer]] + ([INNER_TERMS[self.inner]] if self.inner is not None else [])
        if any(t.needs == "groups" for t in terms) and b.num_groups < 2:
            raise ClearglassError(f"features: outer={self.outer!r}, inner={self.inner!r} needs M >= 2 groups "
                                  f"(over all ranks) to have negatives, got M={b.num_groups}")
        if any(t.needs == "pairs" for t in terms) and b.labels.numel() < 2:
            raise ClearglassError(f"features: outer={self.outer!r} needs at least 2 pairs (M*N >= 2) to have "
                                  "negatives, got 1")
        if negatives is not None and not OUTER_TERMS[self.outer].takes_negatives:
            raise ClearglassError(f"text_negatives: only used by outer={NEGATIVE_OUTERS}; outer={self.outer!r} "
                                  "has no per-image rows to add them to")

    def terms(self, b: _Batch, negatives: Tensor | None) -> dict[str, Tensor]:
        """{"loss", "outer_loss", "inner_loss"} on a prepared batch (inner_loss absent when inner is None)."""
        outer = OUTER_TERMS[self.outer].compute(self, b, negatives)
        if self.inner is None:
            return {"loss": outer, "outer_loss": outer}
        inner = INNER_TERMS[self.inner].compute(self, b, None)
        return {"loss": self.alpha * outer + (1.0 - self.alpha) * inner, "outer_loss": outer, "inner_loss": inner}


def _prepare(image_features: Tensor, text_features: Tensor, text_negatives: Tensor | None,
             local_loss: bool) -> tuple[_Batch, Tensor | None]:
    """Validate, cast to float32, gather over ranks, check finiteness, normalise and flatten to a _Batch."""
    _check_features(image_features, text_features)
    m, n, d = image_features.shape
    if text_negatives is not None:
        _check_negatives(text_negatives, d)
    rank, world = _world()
    images, texts = image_features.float(), text_features.float()  # (M, N, D)
    negatives = None if text_negatives is None else text_negatives.float()  # (K, D)
    if world > 1:
        images, texts = _gather(images), _gather(texts)  # (W*M, N, D)
        negatives = None if negatives is None else _gather(negatives)  # (W*K, D)
    # one cheap reduction, off the autograd graph: any NaN/inf makes the sum non-finite (so may huge finite values:
    # the exact check decides)
    if not torch.isfinite(images.detach().sum() + texts.detach().sum()):
        _raise_non_finite("image_features", images)
        _raise_non_finite("text_features", texts)
    if negatives is not None:
        if not torch.isfinite(negatives.sum()):
            _raise_non_finite("text_negatives", negatives)
        negatives = F.normalize(negatives, dim=-1)
    groups = images.shape[0]
    labels = torch.arange(groups, device=images.device).repeat_interleave(n)  # (B,)
    local = local_loss and world > 1
    rows = slice(rank * m * n, (rank + 1) * m * n) if local else slice(0, groups * n)
    unit_images, unit_texts = _NormalizeRows.apply(images.reshape(-1, d), texts.reshape(-1, d))  # (B, D) each
    batch = _Batch(images=unit_images, texts=unit_texts, labels=labels, num_groups=groups, rows=rows,
                   world_scale=float(world) if local else 1.0, block=n)
    return batch, negatives


def _gather_ids(ids: Tensor) -> Tensor:
    """Concatenate an integer tensor from all ranks along dim 0 (no gradient)."""
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


class MultiLevelGroupedLoss(nn.Module):
    """Instance + cluster objective: loss = w_inst * instance + w_1 * level1 + w_2 * level2.

    instance_loss is the per-pair CLIP loss over all M*N pairs; level1_loss is the grouped loss
    (alpha * outer + (1 - alpha) * inner, as GroupedContrastiveLoss) with the M groups; level2_loss is the same
    grouped loss with the pairs regrouped by `level2_ids` (M,): pairs whose level-1 groups share a level-2 id
    are one group. Level-2 ids are global (not offset by rank), so a level-2 group may span ranks; level-2
    groups have unequal sizes and every inner term is a mean over all its products/features. text_negatives
    (K, D) enter the instance and level-1 image->text denominators only (a level-1 hard negative may share the
    level-2 parent). A batch whose groups all share one level-2 id (hard negatives are often siblings) is one
    level-2 group: every pair is then a positive, so the level-2 terms that contrast groups (outer losses,
    scaled inner losses) take their exact value 0 with no gradient, and the 'pairwise'/'centroid' inner terms
    still pull towards the one centroid. One outer temperature (or learnt logit_scale) serves all levels. Returns
    {"loss", "instance_loss", "level1_loss", "level2_loss"} (level2_loss only when level2_ids is given).
    """

    def __init__(self, instance_weight: float = 1.0, level1_weight: float = 1.0, level2_weight: float = 1.0,
                 outer: str = "pairwise", inner: str | None = "scaled_pairwise", alpha: float = 0.7, tau: float = 0.1,
                 tau_inner: float = 0.07, learn_tau: bool = False, local_loss: bool = False,
                 chunk: int | None = None) -> None:
        super().__init__()
        check_settings({"instance_weight": instance_weight, "level1_weight": level1_weight,
                        "level2_weight": level2_weight})
        self.weights = (float(instance_weight), float(level1_weight), float(level2_weight))
        self.grouped = GroupedContrastiveLoss(outer, inner, alpha, tau, tau_inner, learn_tau, local_loss, chunk)

    def forward(self, image_features: Tensor, text_features: Tensor, level2_ids: Tensor | None = None,
                text_negatives: Tensor | None = None) -> dict[str, Tensor]:
        """Loss terms of (M, N, D) features, optional (M,) level-2 ids of the groups and (K, D) text negatives."""
        if level2_ids is None and self.weights[2] > 0:
            raise ClearglassError(f"level2_ids: expected an (M,) tensor of level-2 group ids because "
                                  f"level2_weight={self.weights[2]} > 0; pass level2_weight=0 for two levels")
        m = image_features.shape[0] if isinstance(image_features, Tensor) and image_features.dim() == 3 else None
        if level2_ids is not None and (not isinstance(level2_ids, Tensor) or level2_ids.is_floating_point()
                                       or level2_ids.is_complex() or tuple(level2_ids.shape) != (m,)):
            shape = tuple(level2_ids.shape) if isinstance(level2_ids, Tensor) else type(level2_ids).__name__
            raise ClearglassError(f"level2_ids: expected an integer tensor of shape (M={m},), one id per group, "
                                  f"got {shape}")
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            batch, negatives = _prepare(image_features, text_features, text_negatives, self.grouped.local_loss)
            self.grouped.check_batch(batch, negatives)
            if batch.labels.numel() < 2:
                raise ClearglassError("features: the instance CLIP loss needs at least 2 pairs (M*N >= 2)")
            instance = clip_outer(batch, self.grouped.outer_scale(), negatives, self.grouped.chunk)
            level1 = self.grouped.terms(batch, negatives)["loss"]
            out = {"instance_loss": instance, "level1_loss": level1}
            loss = self.weights[0] * instance + self.weights[1] * level1
            if level2_ids is not None:
                ids = level2_ids.to(device=batch.labels.device, dtype=torch.long)
                ids = _gather_ids(ids) if _world()[1] > 1 else ids  # (W*M,)
                pair_ids = ids.repeat_interleave(image_features.shape[1])  # (B,)
                unique, labels = torch.unique(pair_ids, return_inverse=True)
                level2_batch = _Batch(batch.images, batch.texts, labels, int(unique.numel()), batch.rows,
                                      batch.world_scale, block=None)
                out["level2_loss"] = self.grouped.terms(level2_batch, None)["loss"]
                loss = loss + self.weights[2] * out["level2_loss"]
            out["loss"] = loss
            return out


# ----------------------------------------------------------------------------------------------------------------
# self-regularisation toward the frozen base (PromptSRC, KgCoOp): an anti-forgetting term for every loss

def self_regularisation(features: Tensor, base_features: Tensor) -> Tensor:
    """Mean over rows of 1 - cos(f, f_base) (= half the squared L2 distance of the normalised features); 0 at the base.

    ``features`` and ``base_features`` are (..., D) with the same shape; every leading index is one row. The base's
    features carry no gradient (they are detached here). Computed in float32 (float64 inputs stay float64) with
    autocast disabled; rows are normalised as F.normalize does.
    """
    if not isinstance(features, Tensor) or not isinstance(base_features, Tensor) \
            or features.shape != base_features.shape or features.dim() < 2 or not features.is_floating_point():
        shapes = [tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in (features, base_features)]
        raise ClearglassError(f"self_regularisation: expected floating features and base features of the same "
                              f"(..., D) shape, got {shapes[0]} and {shapes[1]}")
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = F.normalize(features.to(dtype), dim=-1)  # (..., D)
        b = F.normalize(base_features.detach().to(dtype), dim=-1)
        return (1.0 - (f * b).sum(-1)).mean()


def add_self_regularisation(terms: dict[str, Tensor], pairs: list[tuple[Tensor, Tensor]],
                            weight: float) -> dict[str, Tensor]:
    """Any loss's ``terms`` plus ``self_reg_loss``, the mean of self_regularisation over the (features,
    base_features) pairs (one pair per regularised modality), with ``weight * self_reg_loss`` added to ``loss``."""
    if not pairs:
        raise ClearglassError("self-regularisation: expected at least one (features, base_features) pair")
    self_reg = torch.stack([self_regularisation(f, b) for f, b in pairs]).mean()
    return {**terms, "loss": terms["loss"] + weight * self_reg, "self_reg_loss": self_reg}


# ----------------------------------------------------------------------------------------------------------------
# the registry of named losses (what a training config's ``loss.kind`` names)


@dataclass(frozen=True)
class NamedLoss:
    """A trainable loss by name: how to build it from the loss settings, which batches it trains on ("groups":
    M groups x N pairs of the group sampler; "pairs": random pairs, the CLIP baseline) and, when it ignores the
    ``outer`` setting, the outer term it always uses."""

    build: Callable[..., nn.Module]
    batches: str
    needs_level2: bool = False
    outer: str | None = None

    def outer_term(self, outer: str) -> Term:
        """The outer term this loss uses under the setting ``outer``."""
        return OUTER_TERMS[self.outer or outer]


def _grouped(*, outer: str, inner: str | None, alpha: float, tau: float, tau_inner: float, learn_tau: bool,
             local_loss: bool, chunk: int | None = None, **_: object) -> GroupedContrastiveLoss:
    return GroupedContrastiveLoss(outer, inner, alpha, tau, tau_inner, learn_tau, local_loss, chunk)


def _clip(*, tau: float, learn_tau: bool, local_loss: bool, chunk: int | None = None,
          **_: object) -> GroupedContrastiveLoss:
    return GroupedContrastiveLoss("clip", None, tau=tau, learn_tau=learn_tau, local_loss=local_loss, chunk=chunk)


def _multilevel(*, instance_weight: float, level1_weight: float, level2_weight: float, outer: str,
                inner: str | None, alpha: float, tau: float, tau_inner: float, learn_tau: bool, local_loss: bool,
                chunk: int | None = None, **_: object) -> MultiLevelGroupedLoss:
    return MultiLevelGroupedLoss(instance_weight, level1_weight, level2_weight, outer, inner, alpha, tau, tau_inner,
                                 learn_tau, local_loss, chunk)


LOSSES: dict[str, NamedLoss] = {
    "grouped": NamedLoss(_grouped, "groups"),
    "clip": NamedLoss(_clip, "pairs", outer="clip"),
    "multilevel": NamedLoss(_multilevel, "groups", needs_level2=True),
}


def make_loss(kind: str, **settings: object) -> nn.Module:
    """The registered loss ``kind`` built from keyword settings (a training config's ``loss`` section)."""
    if kind not in LOSSES:
        raise ClearglassError(f"loss kind {kind!r}: expected one of {sorted(LOSSES)}")
    return LOSSES[kind].build(**settings)
