"""Slow, obviously-correct loop versions of the clearglass losses, written from the formulas (float64), and the
default loss in plain autograd ops (autograd_grouped_loss).

Shared by tests/test_losses.py, tests/ddp_loss_worker.py and bench/bench_losses.py.
Features are (M groups, N pairs, D); `labels` optionally regroups the M*N pairs (row-major) for level 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / |x| for one vector."""
    return x / x.norm()


def flat_units(features: torch.Tensor) -> list[torch.Tensor]:
    """Row-major list of the M*N normalised float64 feature vectors."""
    m, n, _ = features.shape
    return [unit(features[g, i].double()) for g in range(m) for i in range(n)]


def info_nce(queries: list, keys: list, positives: list[list[int]], tau: float, extra: list = ()) -> torch.Tensor:
    """Mean over queries q of -log(sum_{k in pos(q)} exp(q.k/tau) / (sum_k exp(q.k/tau) + sum_e exp(q.e/tau)))."""
    total = 0.0
    for q, pos in zip(queries, positives):
        numerator = sum(torch.exp(torch.dot(q, keys[j]) / tau) for j in pos)
        denominator = (sum(torch.exp(torch.dot(q, k) / tau) for k in keys)
                       + sum(torch.exp(torch.dot(q, e) / tau) for e in extra))
        total = total + (-torch.log(numerator / denominator))
    return total / len(queries)


def cross_entropy(query: torch.Tensor, candidates: list, target: int, tau: float) -> torch.Tensor:
    """-log softmax(q.c/tau)[target]."""
    logits = [torch.dot(query, c) / tau for c in candidates]
    return -(logits[target] - torch.log(sum(torch.exp(v) for v in logits)))


def group_members(labels: list[int]) -> dict[int, list[int]]:
    """Group id -> sorted list of row indices."""
    groups: dict[int, list[int]] = {}
    for row, g in enumerate(labels):
        groups.setdefault(g, []).append(row)
    return dict(sorted(groups.items()))


def centroid(vectors: list) -> torch.Tensor:
    """Normalised mean of a list of vectors."""
    return unit(sum(vectors) / len(vectors))


def oracle_terms(image_features, text_features, outer="pairwise", inner="scaled_pairwise", alpha=0.7, tau=0.1,
                 tau_inner=0.07, text_negatives=None, labels=None) -> dict:
    """Loop oracle of GroupedContrastiveLoss: {"loss", "outer_loss", "inner_loss"?}."""
    m, n, _ = image_features.shape
    images, texts = flat_units(image_features), flat_units(text_features)
    labels = [g for g in range(m) for _ in range(n)] if labels is None else [int(v) for v in labels]
    groups = group_members(labels)
    negatives = [] if text_negatives is None else [unit(t.double()) for t in text_negatives]
    b = len(images)
    if outer == "pairwise":
        positives = [[j for j in range(b) if labels[j] == labels[i]] for i in range(b)]
        outer_loss = 0.5 * (info_nce(images, texts, positives, tau, negatives)
                            + info_nce(texts, images, positives, tau))
    elif outer == "clip":
        positives = [[i] for i in range(b)]
        outer_loss = 0.5 * (info_nce(images, texts, positives, tau, negatives)
                            + info_nce(texts, images, positives, tau))
    else:
        image_c = [centroid([images[i] for i in rows]) for rows in groups.values()]
        text_c = [centroid([texts[i] for i in rows]) for rows in groups.values()]
        k = len(image_c)
        outer_loss = sum(cross_entropy(image_c[g], text_c, g, tau) + cross_entropy(text_c[g], image_c, g, tau)
                         for g in range(k)) / (2 * k)
    out = {"outer_loss": outer_loss}
    if inner is None:
        out["loss"] = outer_loss
        return out
    if inner in ("pairwise", "scaled_pairwise"):
        products, centroids = [], []
        for rows in groups.values():
            group_products = [unit(images[i] * texts[j]) for i in rows for j in rows]
            products.append(group_products)
            centroids.append(centroid(group_products))
        count = sum(len(p) for p in products)
        if inner == "pairwise":
            inner_loss = sum(1 - torch.dot(p, centroids[g]) for g, ps in enumerate(products) for p in ps) / count
        else:
            inner_loss = sum(cross_entropy(p, centroids, g, tau_inner)
                             for g, ps in enumerate(products) for p in ps) / count
    else:
        inner_loss = 0.0
        for features in (images, texts):
            centroids = [centroid([features[i] for i in rows]) for rows in groups.values()]
            for g, rows in enumerate(groups.values()):
                for i in rows:
                    if inner == "centroid":
                        inner_loss = inner_loss + (1 - torch.dot(features[i], centroids[g]))
                    else:
                        inner_loss = inner_loss + cross_entropy(features[i], centroids, g, tau_inner)
        inner_loss = inner_loss / (2 * b)
    out["inner_loss"] = inner_loss
    out["loss"] = alpha * outer_loss + (1 - alpha) * inner_loss
    return out


def oracle_multilevel(image_features, text_features, level2_ids=None, instance_weight=1.0, level1_weight=1.0,
                      level2_weight=1.0, text_negatives=None, **grouped) -> dict:
    """Loop oracle of MultiLevelGroupedLoss: instance CLIP + level-1 grouped + level-2 grouped terms."""
    m, n, _ = image_features.shape
    tau = grouped.get("tau", 0.1)
    out = {"instance_loss": oracle_terms(image_features, text_features, "clip", None, tau=tau,
                                         text_negatives=text_negatives)["loss"],
           "level1_loss": oracle_terms(image_features, text_features, text_negatives=text_negatives, **grouped)["loss"]}
    loss = instance_weight * out["instance_loss"] + level1_weight * out["level1_loss"]
    if level2_ids is not None:
        labels = [int(level2_ids[g]) for g in range(m) for _ in range(n)]
        out["level2_loss"] = oracle_terms(image_features, text_features, labels=labels, **grouped)["loss"]
        loss = loss + level2_weight * out["level2_loss"]
    out["loss"] = loss
    return out



def autograd_grouped_loss(image_features: torch.Tensor, text_features: torch.Tensor, alpha: float = 0.7,
                          tau: float = 0.1, tau_inner: float = 0.07) -> torch.Tensor:
    """GroupedContrastiveLoss()'s loss (pairwise outer + scaled_pairwise inner, one process) in plain torch ops.

    The same forward math as the library's hand-written autograd Functions with the backward left to autograd, so
    bench/bench_losses.py can ask whether the hand-written backward earns its lines (issue 23). float32, vectorised:
    it holds the (B, B) and (B*N, M) logits and the (M, N, N, D) products at once.
    """
    m, n, d = image_features.shape
    images = F.normalize(image_features.float(), dim=-1)  # (M, N, D)
    texts = F.normalize(text_features.float(), dim=-1)
    logits = images.reshape(-1, d) @ texts.reshape(-1, d).T / tau  # (B, B) image -> text
    blocks = logits.view(m, n, m, n).diagonal(0, 0, 2)  # (N, N, M) [image i, text j, group]: the positives
    outer = (logits.logsumexp(1).sum() + logits.logsumexp(0).sum() - blocks.logsumexp(1).sum()
             - blocks.logsumexp(0).sum()) / (2 * m * n)
    products = F.normalize(images[:, :, None, :] * texts[:, None, :, :], dim=-1)  # (M, N, N, D)
    centroids = F.normalize(products.sum((1, 2)), dim=-1)  # (M, D)
    inner_logits = products.reshape(-1, d) @ centroids.T / tau_inner  # (M*N*N, M)
    labels = torch.arange(m, device=inner_logits.device).repeat_interleave(n * n)
    return alpha * outer + (1 - alpha) * F.cross_entropy(inner_logits, labels)
