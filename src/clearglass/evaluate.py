"""Evaluation: concept recognition (the paper's K-way protocol), zero-shot per level, caption retrieval,
HierarCaps hierarchical metrics, and seeded bootstrap intervals for every figure.

Tasks take an ``Encoder`` (embeddings in, no model needed), so tests use hand-built embeddings.
Each task returns per-item outcomes (ranks, 0/1, floats); ``evaluate_model`` turns them into metric rows
``{task, subset, metric, value, ci_low, ci_high, n}`` and keeps the per-item outcomes so two models can be
compared pairwise on the very same items (``clearglass.report.compare``). The tasks are a registry, ``TASKS``
(as the losses are ``clearglass.losses.LOSSES``): a task is one ``Task`` entry naming its run function, its metrics
with their statistics, and the identity of its items; adding one is an edit of this file alone.

Ranks are strict: the rank of the true answer is the number of wrong candidates scoring at least as high,
so a tie never counts as a hit (a constant encoder scores chance or worse, never 100%).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from clearglass.config import MAX_SEED, Config, one_blank_field, suggestion
from clearglass.errors import ClearglassError
from clearglass.io import json_digest, load_image, load_torch, save_torch_atomic
from clearglass.magic.schema import LEVELS, ConceptRecord, ImageRecord, resolve_image_path
from clearglass.results import MetricKey, MetricSpec

FIELDS = ("new_caption", "old_caption", "concept_level1", "concept_level2", "concept_level3", "concept_level4")
CAPTION_SOURCES = ("old_captions", "new_captions")


class Encoder(Protocol):
    """Embeds images and texts into one L2-normalised space."""

    def embed_images(self, paths: list[Path]) -> torch.Tensor: ...  # (n, D) float32, L2-normalised

    def embed_texts(self, texts: list[str]) -> torch.Tensor: ...  # (n, D) float32, L2-normalised


# ----------------------------------------------------------------------------------------------------------
# Encoders


class ModelEncoder:
    """An ``Encoder`` for a ``ModelBundle``: each unique image and text is encoded once, batched, without grad.

    ``encode_text`` replaces ``model.encode_text`` (a training run passes its frozen-text cache). With ``cache_dir``,
    embeddings are stored as ``{kind}-{sha256(model key, data key)}.pt``; the model key is
    the spec plus a sha256 of the weights, the data key is the ordered texts or the image paths with their
    sizes and modification times. An entry holds its key and its embeddings' sha256, so one of the wrong shape,
    another entry's or one changed since it was written is refused, naming the file.
    """

    def __init__(self, bundle: Any, batch_size: int = 64, device: str | torch.device = "cpu",
                 cache_dir: str | os.PathLike | None = None,
                 encode_text: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = True):
        self.bundle = bundle
        self.progress = progress
        self.encode_text = encode_text  # e.g. a run's FrozenTextCache: (B, L) tokens -> (B, D), as encode_text
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.n_images_encoded = 0
        self.n_texts_encoded = 0
        self._model_key: str | None = None

    def model_key(self) -> str:
        """Identity of the model: its spec plus a sha256 of its weights (a fresh ``clearglass:scratch`` model
        differs per run)."""
        if self._model_key is None:
            digest = hashlib.sha256()
            for name, tensor in self.bundle.model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            self._model_key = f"{self.bundle.name}:{digest.hexdigest()}"
        return self._model_key

    def _cached(self, kind: str, data_key: str, n: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The (n, D) embeddings of ``compute``, read from or written to the cache entry of (model, data); an entry
        that is not what its name promises (its key, shape or content) is an error naming it."""
        if self.cache_dir is None:
            return compute()
        key = hashlib.sha256(f"{CACHE_FORMAT}\n{self.model_key()}\n{data_key}".encode()).hexdigest()
        path = self.cache_dir / f"{kind}-{key}.pt"
        if path.exists():
            entry = load_torch(path, "embedding cache file")
            problem = _cache_problem(entry, key, n)
            if problem:
                raise ClearglassError(f"{path}: embedding cache file {problem}; delete it and the run recomputes it")
            return entry["embeddings"]
        out = compute()
        save_torch_atomic({"key": key, "embeddings": out, "sha256": _tensor_sha256(out)}, path)
        return out

    def _encode_unique(self, items: list, encode_batch: Callable[[list], torch.Tensor], desc: str) -> torch.Tensor:
        unique = list(dict.fromkeys(items))
        rows = []
        self.bundle.model.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(unique), self.batch_size), desc=desc, unit="batch", leave=False,
                              disable=not self.progress, delay=1.0):  # delay: no bar for sub-second loops
                out = encode_batch(unique[start:start + self.batch_size]).float()  # (b, D)
                rows.append(torch.nn.functional.normalize(out, dim=-1).cpu())
        table = torch.cat(rows) if rows else torch.empty(0, 0)
        where = {x: i for i, x in enumerate(unique)}
        return table[[where[x] for x in items]] if items else table

    def embed_images(self, paths: list[Path]) -> torch.Tensor:
        """(n, D) normalised image embeddings; a missing or corrupt file raises ``ClearglassError`` naming it."""
        paths = [Path(p) for p in paths]

        def stat(p: Path) -> str:
            try:
                s = p.stat()
            except FileNotFoundError:
                raise ClearglassError(f"{p}: image file not found") from None
            except OSError as e:
                raise ClearglassError(f"{p}: cannot read the image file ({e.strerror or e})") from None
            return f"{p.resolve()}:{s.st_size}:{s.st_mtime_ns}"

        def batch(chunk: list[Path]) -> torch.Tensor:
            self.n_images_encoded += len(chunk)
            x = torch.stack([self.bundle.preprocess_val(load_image(p)) for p in chunk]).to(self.device)
            return self.bundle.model.encode_image(x)

        data_key = "\n".join(stat(p) for p in paths)
        return self._cached("images", data_key, len(paths), lambda: self._encode_unique(paths, batch, "images"))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(n, D) normalised text embeddings."""
        from clearglass.models import trim_padding  # exact: drops token columns that cannot change encode_text

        def batch(chunk: list[str]) -> torch.Tensor:
            self.n_texts_encoded += len(chunk)
            if self.encode_text is not None:
                return self.encode_text(self.bundle.tokenizer(chunk).to(self.device))
            tokens = trim_padding(self.bundle, self.bundle.tokenizer(chunk))  # (b, L' <= L)
            return self.bundle.model.encode_text(tokens.to(self.device))

        return self._cached("texts", json.dumps(texts), len(texts),
                            lambda: self._encode_unique(list(texts), batch, "texts"))


CACHE_FORMAT = 2  # embedding cache entries: {"key", "embeddings", "sha256"}; format 1 (a bare tensor) is never read


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _cache_problem(entry: object, key: str, n: int) -> str | None:
    """Why an embedding cache entry cannot be the (n, D) embeddings of ``key``, or None when it is."""
    if not isinstance(entry, dict) or set(entry) != {"key", "embeddings", "sha256"}:
        return "does not hold a cache entry (expected the keys 'key', 'embeddings' and 'sha256')"
    if entry["key"] != key:
        return "holds the entry of another model or data (its key is not its name's)"
    emb = entry["embeddings"]
    if not isinstance(emb, torch.Tensor) or emb.dtype != torch.float32 or emb.ndim != 2 or len(emb) != n \
            or (n and emb.shape[1] < 1):
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        return f"holds embeddings of shape {shape}; expected ({n}, D) float32"
    if entry["sha256"] != _tensor_sha256(emb):
        return "holds embeddings changed since they were written (their sha256 differs from the one stored)"
    return None


class _Once:
    """An ``Encoder`` that asks the one it wraps only for images and texts it has not embedded yet, so tasks run
    one after another still embed every unique image and text once."""

    def __init__(self, encoder: Encoder, name: str = "") -> None:
        self.encoder = encoder
        self.name = name or getattr(getattr(encoder, "bundle", encoder), "name", "?")  # for _embed's errors
        self.images: dict[Path, torch.Tensor] = {}
        self.texts: dict[str, torch.Tensor] = {}

    @staticmethod
    def _fill(store: dict, items: list, embed: Callable[[list], torch.Tensor]) -> torch.Tensor:
        new = [x for x in dict.fromkeys(items) if x not in store]
        if new:
            store.update(zip(new, embed(new)))
        return torch.stack([store[x] for x in items]) if items else torch.empty(0, 0)

    def embed_images(self, paths: list[Path]) -> torch.Tensor:
        return self._fill(self.images, [Path(p) for p in paths], self.encoder.embed_images)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self._fill(self.texts, list(texts), self.encoder.embed_texts)


def _embed(encoder: Encoder, paths: list[Path] | None, texts: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Embed unique images and texts once; returns numpy arrays aligned with the unique lists."""
    img = encoder.embed_images(paths).float().numpy() if paths else np.zeros((0, 0), np.float32)
    txt = encoder.embed_texts(texts).float().numpy() if texts else np.zeros((0, 0), np.float32)
    for name, emb in (("image", img), ("text", txt)):
        if not np.isfinite(emb).all():  # NaN compares false, so it would never rank below the truth: refuse it
            raise ClearglassError(f"model {getattr(getattr(encoder, 'bundle', encoder), 'name', '?')!r}: "
                                  f"{int((~np.isfinite(emb)).any(1).sum())}"
                                  f" {name} embeddings are not finite (NaN or inf weights?); nothing is scored")
    return img, txt


# ----------------------------------------------------------------------------------------------------------
# Concept recognition (the paper's protocol)


@dataclass(frozen=True)
class Item:
    """One K-way recognition trial: candidate 0 is the truth (the anchor image's own text and image)."""

    concepts: tuple[str, ...]   # (K,) concept of each candidate; [0] is the anchor's
    images: tuple[str, ...]     # (K,) image ids; [0] is the anchor image
    texts: tuple[str, ...]      # (K,) field texts (template applied); [0] is the anchor's


def _field_text(image: ImageRecord, field_name: str, template: str) -> str | None:
    """The text of one field of an image (first caption for caption fields), or None if it has none."""
    if field_name == "new_caption":
        return image.new_captions[0] if image.new_captions else None
    if field_name == "old_caption":
        return image.old_captions[0] if image.old_captions else None
    if field_name.startswith("concept_level") and f"level{field_name[-1]}" in LEVELS:
        value = getattr(image, f"level{field_name[-1]}")
        return template.format(value) if value else None
    raise ClearglassError(f"unknown field {field_name!r}: expected one of {FIELDS}")


def make_recognition_items(concepts: list[ConceptRecord], field: str, k: int, seed: int,
                           template: str = "{}") -> list[Item]:
    """The deterministic K-way items for one field; the same (concepts, field, k, seed) always gives the same list.

    Anchors: every test image with a ``level1`` (as the reference) and a value for ``field``. Each concept is
    represented by its first such test image. Negatives: distinct concepts whose field text differs from the
    anchor's and from each other's, drawn without replacement first from the concept's ``hard_negative`` list
    (those with representatives), then, if fewer than K-1, from the remaining concepts in a seeded shuffle.
    Each anchor has its own generator seeded by ``(seed, field, concept, image index)``.
    """
    if field not in FIELDS:
        raise ClearglassError(f"unknown field {field!r}: expected one of {FIELDS}")
    if k < 2:
        raise ClearglassError(f"k={k}: recognition needs at least 2 candidates")
    reps: dict[str, tuple[str, str]] = {}   # concept -> (image id, text) of its representative
    anchors: list[tuple[ConceptRecord, int, ImageRecord, str]] = []
    for c in concepts:
        if not c.test_images:
            continue
        for j, im in enumerate(c.test_images):
            text = _field_text(im, field, template)
            if im.level1 is None or text is None:
                continue
            reps.setdefault(c.concept, (im.image, text))
            anchors.append((c, j, im, text))
    if len(reps) < k:
        raise ClearglassError(
            f"field {field!r}: only {len(reps)} concepts have test images with this field; k={k} needs at least {k}")
    names = sorted(reps)
    items = []
    for c, j, im, text in anchors:
        rng = random.Random(f"{seed}|{field}|{c.concept}|{j}")
        chosen: list[str] = []
        used = {text}

        def take(pool: list[str]) -> None:
            for name in pool:
                if len(chosen) == k - 1:
                    return
                if name != c.concept and name not in chosen and reps[name][1] not in used:
                    chosen.append(name)
                    used.add(reps[name][1])

        hard = sorted({n for n in c.hard_negative if n in reps})
        take(rng.sample(hard, len(hard)))
        rest = [n for n in names if n not in hard]
        take(rng.sample(rest, len(rest)))
        if len(chosen) < k - 1:
            raise ClearglassError(
                f"field {field!r}, concept {c.concept!r}, test image {im.image!r}: only {len(chosen)} other concepts "
                f"have a {field} text different from {text!r}; k={k} needs {k - 1} (use a smaller --k)")
        items.append(Item(concepts=(c.concept, *chosen), images=(im.image, *(reps[n][0] for n in chosen)),
                          texts=(text, *(reps[n][1] for n in chosen))))
    return items


def items_hash(items: Sequence[Any]) -> str:
    """A short sha256 of a list of items (dataclasses or JSON data), to check two models saw the same items."""
    return json_digest([asdict(x) if hasattr(x, "__dataclass_fields__") else x for x in items])


def strict_rank(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """rank = #{wrong candidates with score >= the true score}; scores (n, C), true_index (n,). A NaN score
    (which compares false with everything) counts against the truth: a NaN truth has the worst rank, a NaN wrong
    candidate beats it, so NaN scores never make a hit."""
    true = np.take_along_axis(scores, true_index[:, None], axis=1)  # (n, 1)
    return ((scores >= true) | np.isnan(scores) | np.isnan(true)).sum(axis=1) - 1


def score_recognition(encoder: Encoder, items: list[Item], image_root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per-item ranks of the truth: ``i2t_rank`` (the image picks among K texts), ``t2i_rank`` (the text among K
    images)."""
    paths = list(dict.fromkeys(resolve_image_path(image_root, i) for it in items for i in it.images))
    texts = list(dict.fromkeys(t for it in items for t in it.texts))
    img, txt = _embed(encoder, paths, texts)
    p_idx = {p: i for i, p in enumerate(paths)}
    t_idx = {t: i for i, t in enumerate(texts)}
    image_ix = np.array([[p_idx[resolve_image_path(image_root, i)] for i in it.images] for it in items])  # (n, K)
    text_ix = np.array([[t_idx[t] for t in it.texts] for it in items])  # (n, K)
    i2t = np.einsum("nd,nkd->nk", img[image_ix[:, 0]], txt[text_ix])  # (n, K) anchor image vs K texts
    t2i = np.einsum("nd,nkd->nk", txt[text_ix[:, 0]], img[image_ix])  # (n, K) anchor text vs K images
    zero = np.zeros(len(items), dtype=int)
    return {"i2t_rank": strict_rank(i2t, zero), "t2i_rank": strict_rank(t2i, zero)}


# ----------------------------------------------------------------------------------------------------------
# Zero-shot classification per level


def level_labels(concepts: list[ConceptRecord], level: int) -> list[str]:
    """The distinct values of one level among test images, sorted."""
    if not 1 <= level <= len(LEVELS):
        raise ClearglassError(f"unknown level {level}: expected 1..{len(LEVELS)}")
    return sorted({v for c in concepts for im in c.test_images if (v := getattr(im, f"level{level}"))})


def zero_shot(encoder: Encoder, concepts: list[ConceptRecord], image_root: str | os.PathLike, level: int,
              template: str = "{}") -> dict[str, Any]:
    """Per test image with a value at ``level``: the strict rank of its label among all labels of that level."""
    labels = level_labels(concepts, level)
    if len(labels) < 2:
        raise ClearglassError(f"level{level}: zero-shot needs at least 2 distinct labels among test images, "
                              f"found {labels}")
    records = [im for c in concepts for im in c.test_images if getattr(im, f"level{level}")]
    paths = [resolve_image_path(image_root, im.image) for im in records]
    unique_paths = list(dict.fromkeys(paths))
    img, txt = _embed(encoder, unique_paths, [template.format(x) for x in labels])
    p_idx = {p: i for i, p in enumerate(unique_paths)}
    scores = img[[p_idx[p] for p in paths]] @ txt.T  # (n images, L labels)
    label_ix = {x: i for i, x in enumerate(labels)}
    cls = np.array([label_ix[getattr(im, f"level{level}")] for im in records], dtype=int)
    return {"rank": strict_rank(scores, cls), "class": cls, "labels": labels,
            "items": [im.image for im in records]}


def rank_labels(encoder: Encoder, paths: list[Path], labels: list[str], template: str = "{}") -> np.ndarray:
    """Cosine scores of every image against every label: (n images, L labels)."""
    img, txt = _embed(encoder, list(paths), [template.format(x) for x in labels])
    return img @ txt.T


# ----------------------------------------------------------------------------------------------------------
# Caption retrieval


def _retrieval_entries(concepts: list[ConceptRecord], captions: str) -> list[tuple[str, list[str]]]:
    """(image id, its captions) for every test image with captions; an image listed twice has its captions merged."""
    if captions not in CAPTION_SOURCES:
        raise ClearglassError(f"unknown caption source {captions!r}: expected one of {CAPTION_SOURCES}")
    merged: dict[str, list[str]] = {}
    for c in concepts:
        for im in c.test_images:
            caps = getattr(im, captions)
            if caps:
                merged.setdefault(im.image, [])
                merged[im.image].extend(x for x in caps if x not in merged[im.image])
    return list(merged.items())


def retrieval(encoder: Encoder, concepts: list[ConceptRecord], image_root: str | os.PathLike,
              captions: str = "old_captions", chunk: int = 1024) -> dict[str, np.ndarray]:
    """Strict ranks for caption retrieval over test images. Identical caption strings are one candidate, correct
    for every image that carries it: ``i2t_rank`` per image (its best own caption among the distinct captions),
    ``t2i_rank`` per distinct caption (its best image among all images; ``texts`` lists them)."""
    entries = _retrieval_entries(concepts, captions)
    if len(entries) < 2:
        raise ClearglassError(f"retrieval needs at least 2 test images with {captions}, found {len(entries)}")
    paths = [resolve_image_path(image_root, image) for image, _ in entries]
    texts = list(dict.fromkeys(t for _, caps in entries for t in caps))
    t_idx = {t: i for i, t in enumerate(texts)}
    img, txt = _embed(encoder, paths, texts)
    own = np.zeros((len(entries), len(texts)), dtype=bool)  # (I, U) image i carries distinct caption u
    for i, (_, caps) in enumerate(entries):
        own[i, [t_idx[t] for t in caps]] = True
    return {"i2t_rank": _best_correct_rank(img, txt, own, chunk),
            "t2i_rank": _best_correct_rank(txt, img, own.T, chunk),
            "images": [e[0] for e in entries], "texts": texts}


def _best_correct_rank(queries: np.ndarray, candidates: np.ndarray, correct: np.ndarray, chunk: int) -> np.ndarray:
    """Per query: #{wrong candidates scoring >= its best correct candidate}; correct (Q, C) has a True per row. A
    NaN score counts against the truth, as in :func:`strict_rank`."""
    ranks = np.empty(len(queries), dtype=int)
    for s in range(0, len(queries), chunk):
        sims = queries[s:s + chunk] @ candidates.T  # (b, C)
        mine = correct[s:s + chunk]
        best = np.where(mine, sims, -np.inf).max(axis=1, keepdims=True)  # (b, 1); NaN if any correct one is NaN
        beats = (sims >= best) | np.isnan(sims) | np.isnan(best)  # (b, C)
        ranks[s:s + chunk] = (beats & ~mine).sum(axis=1)
    return ranks


# ----------------------------------------------------------------------------------------------------------
# HierarCaps hierarchical metrics


def hierarchy_chains(concepts: list[ConceptRecord]) -> list[tuple[str, tuple[str, str, str, str]]]:
    """(image id, chain general -> specific = (level4, level3, level2, level1)) of every test image with all 4
    levels."""
    return [(im.image, (im.level4, im.level3, im.level2, im.level1)) for c in concepts for im in c.test_images
            if all(im.levels())]


def _kendall_tau_vs_order(radii: np.ndarray) -> np.ndarray:
    """Kendall's tau between each row (n, 4) and the order 0..3: (concordant - discordant) / 6 pairs."""
    i, j = np.triu_indices(radii.shape[1], k=1)
    return np.sign(radii[:, j] - radii[:, i]).sum(axis=1) / len(i)


def hierarchical(encoder: Encoder, concepts: list[ConceptRecord], image_root: str | os.PathLike,
                 steps: int = 100) -> dict[str, np.ndarray]:
    """HierarCaps metrics (Alper & Averbuch-Elor, ECCV 2024), as in their ``hierarchical_retrieval.py``.

    radius(t) = ||e(t) - e("")||. ``d_corr`` per chain: Kendall tau of the 4 radii against the order general ->
    specific. Hierarchical retrieval per image: for ``steps`` thresholds r in linspace(min radius, max radius),
    predict the most similar text with radius <= r; the distinct predictions P give precision = |P & G| / |P|
    (G: all texts of the image's chains) and recall = fraction of the 4 levels whose text (in any chain) is in P.
    """
    chains = hierarchy_chains(concepts)
    if not chains:
        raise ClearglassError("hierarchical metrics need test images with all four levels; found none")
    texts = list(dict.fromkeys(t for _, ch in chains for t in ch))
    image_ids = list(dict.fromkeys(i for i, _ in chains))
    paths = [resolve_image_path(image_root, i) for i in image_ids]
    img, txt = _embed(encoder, paths, ["", *texts])
    root, txt = txt[0], txt[1:]
    radius = np.linalg.norm(txt - root[None], axis=1)  # (T,)
    t_idx = {t: i for i, t in enumerate(texts)}
    chain_ix = np.array([[t_idx[t] for t in ch] for _, ch in chains])  # (C, 4)
    d_corr = _kendall_tau_vs_order(radius[chain_ix])

    order = np.argsort(radius, kind="stable")
    thresholds = np.linspace(radius.min(), radius.max(), steps)
    prefix = np.searchsorted(radius[order], thresholds, side="right")  # (steps,) texts with radius <= r
    sims = (img @ txt.T)[:, order]  # (I, T) sorted by radius
    prev_max = np.concatenate([np.full((len(img), 1), -np.inf), np.maximum.accumulate(sims, axis=1)[:, :-1]], axis=1)
    running_arg = np.maximum.accumulate(np.where(sims > prev_max, np.arange(sims.shape[1])[None], 0), axis=1)
    preds = order[running_arg[:, prefix - 1]]  # (I, steps) text index predicted at each threshold
    gts: dict[str, list[np.ndarray]] = {}
    for (image, _), row in zip(chains, chain_ix):
        gts.setdefault(image, []).append(row)
    precision = np.empty(len(image_ids))
    recall = np.empty(len(image_ids))
    for i, image in enumerate(image_ids):
        predicted = set(preds[i].tolist())
        own = np.stack(gts[image])  # (chains of this image, 4)
        precision[i] = len(predicted & set(own.ravel().tolist())) / len(predicted)
        recall[i] = np.mean([any(x in predicted for x in own[:, lv]) for lv in range(4)])
    return {"d_corr": d_corr, "precision": precision, "recall": recall, "images": image_ids,
            "chains": [list(ch) for _, ch in chains]}


# ----------------------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int = 1000, seed: int = 0,
              level: float = 0.95, chunk: int = 200) -> tuple[float, float]:
    """Percentile bootstrap interval: ``stat(idx)`` maps resample indices (B, n) to B statistics."""
    if n == 0:
        raise ClearglassError("bootstrap over zero items")
    rng = np.random.default_rng(seed)
    values = np.concatenate([stat(rng.integers(0, n, size=(min(chunk, n_boot - s), n)))
                             for s in range(0, n_boot, chunk)])
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _class_recall(correct: np.ndarray, cls: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean per-class recall of each resample: correct (n,), cls (n,), idx (B, n) -> (B,)."""
    n_cls = int(cls.max()) + 1
    flat = (np.arange(idx.shape[0])[:, None] * n_cls + cls[idx]).ravel()
    hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=idx.shape[0] * n_cls).reshape(-1, n_cls)
    seen = np.bincount(flat, minlength=idx.shape[0] * n_cls).reshape(-1, n_cls)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(np.where(seen > 0, hits / seen, np.nan), axis=1)


Statistic = Callable[[np.ndarray], np.ndarray]  # resample indices (B, n) -> (B,) values


def _hit(spec: MetricSpec, arrays: dict[str, np.ndarray]) -> Statistic:
    hit = (np.asarray(arrays[spec.array], dtype=float) < spec.k).astype(float)
    return lambda idx: hit[idx].mean(axis=1)


def _mean(spec: MetricSpec, arrays: dict[str, np.ndarray]) -> Statistic:
    a = np.asarray(arrays[spec.array], dtype=float)
    return lambda idx: a[idx].mean(axis=1)


def _recall_per_class(spec: MetricSpec, arrays: dict[str, np.ndarray]) -> Statistic:
    hit = (np.asarray(arrays[spec.array], dtype=float) < spec.k).astype(float)
    cls = np.asarray(arrays[spec.classes], dtype=int)
    return lambda idx: _class_recall(hit, cls, idx)


STATISTICS: dict[str, Callable[[MetricSpec, dict[str, np.ndarray]], Statistic]] = {
    "hit": _hit, "mean": _mean, "class_recall": _recall_per_class}


def metric_stat(spec: MetricSpec, arrays: dict[str, np.ndarray]) -> Statistic:
    """The statistic of a metric row as a function of resample indices (B, n) -> (B,): ``STATISTICS[spec.stat]``
    (or a task's own statistic) over ``arrays``."""
    statistics = _statistics()
    if spec.stat not in statistics:
        raise ClearglassError(f"unknown metric statistic {spec.stat!r}: expected one of {sorted(statistics)}")
    return statistics[spec.stat](spec, arrays)


# ----------------------------------------------------------------------------------------------------------
# Whole evaluation


@dataclass
class EvalConfig(Config):
    """What ``evaluate_model`` runs. ``fields=None``: every field whose concepts have at least k distinct texts;
    ``levels=None``: every level with at least 2 distinct labels; what was left out is listed under ``skipped``."""

    k: int = 5
    fields: list[str] | None = None
    levels: list[int] | None = None
    template: str = "a picture of {}"
    seed: int = 0
    n_boot: int = 1000
    ci_level: float = 0.95
    tasks: list[str] = field(default_factory=lambda: ["recognition", "zero_shot", "retrieval"])
    retrieval_captions: str = "old_captions"
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    hierarchy_steps: int = 100

    def validate(self) -> None:
        """Known tasks, fields, levels and caption sources; the bounds of k, n_boot, ci_level, hierarchy_steps,
        retrieval_ks and seed; a template of one bare ``{}``."""
        for t in self.tasks:
            task_named(t)
        for f in self.fields or []:
            if f not in FIELDS:
                raise ClearglassError(f"unknown field {f!r}: expected some of {FIELDS}")
        for lv in self.levels or []:
            if not 1 <= lv <= len(LEVELS):
                raise ClearglassError(f"unknown level {lv}: expected some of 1..{len(LEVELS)}")
        if self.retrieval_captions not in CAPTION_SOURCES:
            raise ClearglassError(f"retrieval_captions {self.retrieval_captions!r}: expected one of {CAPTION_SOURCES}")
        bounds = [("k", self.k, self.k >= 2, "k >= 2"), ("n_boot", self.n_boot, self.n_boot >= 1, "n_boot >= 1"),
                  ("ci_level", self.ci_level, 0 < self.ci_level < 1, "0 < ci_level < 1"),
                  ("hierarchy_steps", self.hierarchy_steps, self.hierarchy_steps >= 2, "hierarchy_steps >= 2"),
                  ("retrieval_ks", self.retrieval_ks, all(k >= 1 for k in self.retrieval_ks), "each k >= 1"),
                  ("seed", self.seed, 0 <= self.seed < MAX_SEED, "0 <= seed < 2**63")]
        for name, value, ok, expected in bounds:
            if not ok:
                raise ClearglassError(f"{name} = {value!r}: expected {expected}")
        if not one_blank_field(self.template):
            raise ClearglassError(f"template {self.template!r}: expected one {{}} for the label and no other {{...}} "
                                  "field (write {{ and }} for braces)")


def test_set_hash(concepts: list[ConceptRecord]) -> str:
    """A short sha256 of the test split (image ids, captions, levels, hard negatives) of a dataset."""
    return json_digest([[c.concept, c.hard_negative, [asdict(im) for im in c.test_images]] for c in concepts])


def _auto_fields(concepts: list[ConceptRecord], k: int) -> tuple[list[str], dict[str, str]]:
    """Fields where at least k concepts' representatives have distinct texts, and why the others were skipped."""
    chosen, skipped = [], {}
    for f in FIELDS:
        texts = {}
        for c in concepts:
            for im in c.test_images:
                if im.level1 is not None and (t := _field_text(im, f, "{}")) is not None:
                    texts.setdefault(c.concept, t)
                    break
        if len(set(texts.values())) >= k:
            chosen.append(f)
        else:
            skipped[f] = f"only {len(set(texts.values()))} distinct texts among concepts; k={k}"
    return chosen, skipped


def _auto_levels(concepts: list[ConceptRecord]) -> tuple[list[int], dict[str, str]]:
    """Levels with at least 2 distinct labels among test images, and why the others were skipped."""
    chosen, skipped = [], {}
    for lv in range(1, len(LEVELS) + 1):
        n = len(level_labels(concepts, lv))
        if n >= 2:
            chosen.append(lv)
        else:
            skipped[f"level{lv}"] = f"only {n} distinct labels"
    return chosen, skipped


def _check(concepts: list[ConceptRecord]) -> None:
    empty = [c.concept for c in concepts if not c.test_images and not c.train_images]
    if empty:
        raise ClearglassError(f"concept(s) without any images: {empty[:5]}; every concept needs images")
    if not any(c.test_images for c in concepts):
        raise ClearglassError("the dataset has no test images")


# ----------------------------------------------------------------------------------------------------------
# The registry of tasks (what ``EvalConfig.tasks`` and the task of a ``MetricKey`` name)

Unit = tuple[str, dict[str, Any]]  # (subset, per-item outcomes: numpy arrays per item, plus what identifies them)


@dataclass(frozen=True)
class Task:
    """An evaluation task by name: ``run`` scores it (one unit per subset), ``metrics`` names each unit's metrics
    with the statistic of each, ``identity`` says which items a unit's outcomes are about (two models pair only on
    the same items), ``subsets`` are the subsets it can score and ``select`` narrows a config to some of them
    (validation during training). ``statistics`` adds statistics its metrics use to ``STATISTICS``."""

    run: Callable[[Encoder, list[ConceptRecord], Any, EvalConfig], list[Unit]]
    metrics: Callable[[EvalConfig], list[tuple[str, MetricSpec]]]
    identity: Callable[[dict[str, Any]], list]
    subsets: tuple[str, ...]
    select: Callable[[EvalConfig, list[str]], EvalConfig]
    statistics: dict[str, Callable[[MetricSpec, dict[str, np.ndarray]], Statistic]] = field(default_factory=dict)


def _recognition(encoder: Encoder, concepts: list[ConceptRecord], root: Any, config: EvalConfig) -> list[Unit]:
    units = []
    for f in config.fields:
        items = make_recognition_items(concepts, f, config.k, config.seed, config.template)
        units.append((f, {**score_recognition(encoder, items, root), "items": items}))
    return units


def _one_caption_source(config: EvalConfig, subsets: list[str]) -> EvalConfig:
    if len(set(subsets)) != 1:
        raise ClearglassError(f"retrieval subsets {subsets}: one evaluation scores one caption source")
    return replace(config, retrieval_captions=subsets[0])


RECALL_AT_1 = [(f"{d}_R@1", MetricSpec("hit", f"{d}_rank", 1)) for d in ("i2t", "t2i")]
TASKS: dict[str, Task] = {
    "recognition": Task(
        run=_recognition, metrics=lambda config: RECALL_AT_1, identity=lambda out: out["items"],
        subsets=FIELDS, select=lambda config, subsets: replace(config, fields=subsets)),
    "zero_shot": Task(
        run=lambda encoder, concepts, root, config: [
            (f"level{lv}", zero_shot(encoder, concepts, root, lv, config.template)) for lv in config.levels],
        metrics=lambda config: [("top1", MetricSpec("hit", "rank", 1)), ("top5", MetricSpec("hit", "rank", 5)),
                                ("mean_class_recall", MetricSpec("class_recall", "rank", 1, "class"))],
        identity=lambda out: [out["items"], out["labels"]],
        subsets=tuple(f"level{i}" for i in range(1, len(LEVELS) + 1)),
        select=lambda config, subsets: replace(config, levels=[int(s.removeprefix("level")) for s in subsets])),
    "retrieval": Task(
        run=lambda encoder, concepts, root, config: [
            (config.retrieval_captions, retrieval(encoder, concepts, root, config.retrieval_captions))],
        metrics=lambda config: [(f"{d}_R@{k}", MetricSpec("hit", f"{d}_rank", k))
                                for d in ("i2t", "t2i") for k in config.retrieval_ks],
        identity=lambda out: [out["images"], out["texts"]], subsets=CAPTION_SOURCES,
        select=_one_caption_source),
    "hierarchical": Task(
        run=lambda encoder, concepts, root, config: [
            ("hierarcaps", hierarchical(encoder, concepts, root, config.hierarchy_steps))],
        metrics=lambda config: [(m, MetricSpec("mean", m)) for m in ("precision", "recall", "d_corr")],
        identity=lambda out: [out["images"], out["chains"]], subsets=("hierarcaps",),
        select=lambda config, subsets: config),
}


def _base_and_novel(encoder: Encoder, concepts: list[ConceptRecord], root: Any, config: EvalConfig) -> list[Unit]:
    """Recognition per field, each item marked novel (its concept has no training images) or base."""
    novel = {c.concept: not c.train_images for c in concepts}
    units = []
    for subset, out in _recognition(encoder, concepts, root, config):
        flags = np.array([novel[item.concepts[0]] for item in out["items"]], dtype=bool)
        if flags.all() or not flags.any():
            raise ClearglassError(f"harmonic_mean/{subset}: needs test items of base concepts (with training images) "
                                  f"and of novel ones (without); found {int((~flags).sum())} and {int(flags.sum())}")
        units.append((subset, {**out, "novel": flags}))
    return units


def _harmonic_mean_of_hits(spec: MetricSpec, arrays: dict[str, np.ndarray]) -> Statistic:
    """Per resample: the harmonic mean of the hit rates (array < k) on base and on novel (``classes``) items."""
    from clearglass.base_to_novel import harmonic_mean

    hit, novel = np.asarray(arrays[spec.array]) < spec.k, np.asarray(arrays[spec.classes], dtype=bool)

    def stat(idx: np.ndarray) -> np.ndarray:
        h, nv = hit[idx], novel[idx]  # (B, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            base, new = (h & ~nv).sum(1) / (~nv).sum(1), (h & nv).sum(1) / nv.sum(1)  # nan: a side not drawn
        return np.where(np.isnan(base) | np.isnan(new), np.nan, harmonic_mean(np.nan_to_num(base), np.nan_to_num(new)))

    return stat


TASKS["harmonic_mean"] = Task(  # base-to-novel: 2·B·N / (B + N) of recognition on base and novel concepts
    run=_base_and_novel, identity=lambda out: [*out["items"], out["novel"].tolist()], subsets=FIELDS,
    metrics=lambda config: [(name, MetricSpec("harmonic_mean", spec.array, 1, "novel")) for name, spec in RECALL_AT_1],
    select=lambda config, subsets: replace(config, fields=subsets),
    statistics={"harmonic_mean": _harmonic_mean_of_hits})


def task_named(name: str) -> Task:
    """The registered task ``name``; an unknown name is an error with the closest known one."""
    if name not in TASKS:
        raise ClearglassError(f"unknown task {name!r}: {suggestion(name, sorted(TASKS))}")
    return TASKS[name]


def check_metric(key: MetricKey, config: EvalConfig | None = None) -> MetricKey:
    """``key`` when its task is registered, its subset one the task scores and its metric one the task reports
    (under ``config``, default ``EvalConfig()``); else an error naming it, with the closest known name."""
    if key.task not in TASKS:
        raise ClearglassError(f"metric {key}: unknown task {key.task!r}; {suggestion(key.task, sorted(TASKS))}")
    task = TASKS[key.task]
    if key.subset not in task.subsets:
        raise ClearglassError(f"metric {key}: task {key.task!r} has no subset {key.subset!r}; "
                              f"{suggestion(key.subset, list(task.subsets))}")
    names = [name for name, _ in task.metrics(config or EvalConfig())]
    if key.metric not in names:
        raise ClearglassError(f"metric {key}: task {key.task!r} reports no {key.metric!r}; "
                              f"{suggestion(key.metric, names)}")
    return key


def config_for(keys: list[MetricKey], config: EvalConfig | None = None) -> EvalConfig:
    """``config`` (default ``EvalConfig()``) narrowed to the tasks and subsets that score ``keys``, each checked."""
    config = config or EvalConfig()
    for key in keys:
        check_metric(key, config)
    tasks = list(dict.fromkeys(k.task for k in keys))
    config = replace(config, tasks=tasks)
    for t in tasks:
        config = TASKS[t].select(config, list(dict.fromkeys(k.subset for k in keys if k.task == t)))
    return config


def _statistics() -> dict[str, Callable[[MetricSpec, dict[str, np.ndarray]], Statistic]]:
    return {**STATISTICS, **{name: f for task in TASKS.values() for name, f in task.statistics.items()}}


def metric_row(key: MetricKey, spec: MetricSpec, arrays: dict[str, np.ndarray], n_boot: int, seed: int,
               ci_level: float) -> dict:
    """The metric row of ``key``: the value of ``spec``'s statistic over all items of ``arrays`` and its bootstrap
    interval (``n_boot`` resamples, ``seed``, ``ci_level``)."""
    n = len(arrays[spec.array])
    stat = metric_stat(spec, arrays)
    low, high = bootstrap(stat, n, n_boot, seed, ci_level)
    return {"task": key.task, "subset": key.subset, "metric": key.metric, "value": float(stat(np.arange(n)[None])[0]),
            "ci_low": low, "ci_high": high, "n": n, "unit": f"{key.unit}/{spec.array}", "stat": spec.to_dict()}


def metric_rows(units: list[tuple[str, str, dict]], config: EvalConfig) -> tuple[list[dict], dict]:
    """Metric rows with bootstrap intervals, and the per-item outcomes they were computed from, of
    ``(task, subset, outcomes)`` units."""
    rows, per_item = [], {}
    for task, subset, outcomes in units:
        arrays = {k: v for k, v in outcomes.items() if isinstance(v, np.ndarray)}
        rows += [metric_row(MetricKey(task, subset, name), spec, arrays, config.n_boot, config.seed, config.ci_level)
                 for name, spec in TASKS[task].metrics(config)]
        per_item[f"{task}/{subset}"] = {"items_hash": items_hash(TASKS[task].identity(outcomes)),
                                        "arrays": {k: v.tolist() for k, v in arrays.items()}}
    return rows, per_item


def evaluate_model(encoder: Encoder, concepts: list[ConceptRecord], image_root: str | os.PathLike,
                   config: EvalConfig | None = None, model: str = "", data: str = "") -> dict:
    """Run the configured tasks, encoding every unique image and text once, and return the results dict. Image ids
    resolve under ``image_root`` (an ``ImageRoot`` says whether they may leave it; a plain folder: they may not),
    all of them before anything is encoded."""
    config = config or EvalConfig()
    _check(concepts)
    skipped: dict[str, str] = {}
    if config.fields is None:
        fields, skipped_fields = _auto_fields(concepts, config.k)
        config = replace(config, fields=fields)
        skipped.update({f"recognition/{f}": why for f, why in skipped_fields.items()})
    if config.levels is None:
        levels, skipped_levels = _auto_levels(concepts)
        config = replace(config, levels=levels)
        skipped.update({f"zero_shot/{lv}": why for lv, why in skipped_levels.items()})
    for im in (im for c in concepts for im in c.test_images):  # every task reads test images only
        resolve_image_path(image_root, im.image)
    once = _Once(encoder, model)
    units = [(t, subset, out) for t in config.tasks for subset, out in TASKS[t].run(once, concepts, image_root, config)]
    rows, per_item = metric_rows(units, config)
    return {"model": model, "data": data, "test_set_hash": test_set_hash(concepts), "config": asdict(config),
            "skipped": skipped, "n_images_embedded": len(once.images), "n_texts_embedded": len(once.texts),
            "metrics": rows, "per_item": per_item}
