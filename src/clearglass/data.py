"""Batches of groups: the group batch sampler (M groups x N pairs), the random-pairs sampler, and the datasets.

A *group* is one concept with its train images; a *pair* is (image, one of its captions). A global batch is a
pure function of (seed, epoch, position), built identically on every rank; each rank takes its contiguous slice,
so the union of the ranks' batches is the one-process batch, and no group appears twice in one global batch.

Sampler items are ``PairKey`` tuples; ``PairDataset`` turns one into (image tensor, token row) and
``GroupCollate`` stacks a batch into a ``Batch``: images (M, N, C, H, W), tokens (M, N, L), the keys and the groups'
level2 ids, so a training step recomputes nothing.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.io import DEFAULT_MAX_PIXELS, load_image
from clearglass.magic.schema import ConceptRecord, ImageRecord, ImageRoot, image_key, resolve_image_path

CAPTION_FIELDS = ("new_captions", "old_captions")
SHORT_GROUP_POLICIES = ("replace", "skip")


class PairKey(NamedTuple):
    """One sampled pair: group index, image index within the group, caption index, and the augmentation seed."""

    group: int
    image: int
    caption: int
    seed: int


@dataclass
class Group:
    """One concept's train images that have at least one caption, its hard-negative groups (as indices) and its
    level2 parent (the most common level2 of its images; ties: the sorted first)."""

    concept: str
    images: list[ImageRecord]
    hard_negatives: list[int]
    level2: str | None = None


class GroupIndex:
    """Train groups of a MAGIC dataset with O(1) lookups: ``index_of[concept]`` and precomputed hard-negative indices.

    Held-out concepts (no train images) are never groups. Groups with fewer than ``min_images`` usable images are
    kept when ``short_groups='replace'`` (their pairs are drawn with replacement) and dropped, and listed in
    ``skipped``, when ``short_groups='skip'``. Empty captions are left out; images without a non-empty caption in
    ``caption_field`` are not pairs, and their count is ``images_without_captions``. Hard negatives that name no
    concept of the dataset are dropped and counted in ``unknown_hard_negatives`` (those naming held-out or skipped
    concepts are no groups, so they go too). A concept named as its own hard negative, and an image id (``./``
    and ``//`` aside) in two concepts, are errors: the loss would push an image away from its own concept.
    """

    def __init__(
        self,
        concepts: list[ConceptRecord],
        caption_field: str = "new_captions",
        min_images: int = 1,
        short_groups: str = "replace",
    ) -> None:
        if caption_field not in CAPTION_FIELDS:
            raise ClearglassError(f"caption field {caption_field!r}: expected one of {CAPTION_FIELDS}")
        if short_groups not in SHORT_GROUP_POLICIES:
            raise ClearglassError(f"short_groups {short_groups!r}: expected one of {SHORT_GROUP_POLICIES}")
        self.caption_field = caption_field
        self.held_out: list[str] = []
        self.skipped: list[str] = []
        self.images_without_captions = 0
        names = {rec.concept for rec in concepts}
        self.unknown_hard_negatives = sum(n not in names for rec in concepts for n in rec.hard_negative)
        _refuse_shared_images(concepts)
        kept: list[tuple[ConceptRecord, list[ImageRecord]]] = []
        for rec in concepts:
            if rec.concept in rec.hard_negative:
                raise ClearglassError(f"concept {rec.concept!r} names itself as a hard negative: expected other "
                                      "concepts (clearglass validate lists every problem)")
            if not rec.train_images:
                self.held_out.append(rec.concept)
                continue
            with_text = [replace(im, **{caption_field: [c for c in getattr(im, caption_field) if c.strip()]})
                         for im in rec.train_images]
            usable = [im for im in with_text if getattr(im, caption_field)]
            self.images_without_captions += len(rec.train_images) - len(usable)
            if not usable or (short_groups == "skip" and len(usable) < min_images):
                self.skipped.append(rec.concept)
                continue
            kept.append((rec, usable))
        self.index_of: dict[str, int] = {}
        for i, (rec, _) in enumerate(kept):
            if rec.concept in self.index_of:
                raise ClearglassError(f"concept {rec.concept!r} appears twice in the dataset: expected unique concepts")
            self.index_of[rec.concept] = i
        self.groups = [
            Group(
                concept=rec.concept,
                images=usable,
                hard_negatives=list(dict.fromkeys(
                    self.index_of[n] for n in rec.hard_negative if n in self.index_of
                )),
                level2=min(Counter(im.level2 for im in usable).most_common(),
                           key=lambda item: (-item[1], item[0] or ""))[0],
            )
            for rec, usable in kept
        ]

    def __len__(self) -> int:
        """Number of groups."""
        return len(self.groups)

    def num_pairs(self) -> int:
        """Number of (image, caption) pairs over all groups."""
        return sum(len(getattr(im, self.caption_field)) for g in self.groups for im in g.images)

    def level2_ids(self) -> list[int]:
        """Per group, an id shared exactly by the groups with the same level2 (sorted names first); a group without
        a level2 has an id of its own."""
        names = sorted({g.level2 for g in self.groups if g.level2 is not None})
        ids = {name: i for i, name in enumerate(names)}
        alone = iter(range(len(names), len(names) + len(self.groups)))
        return [ids[g.level2] if g.level2 is not None else next(alone) for g in self.groups]


def _refuse_shared_images(concepts: list[ConceptRecord]) -> None:
    """An error naming the image and both concepts when one image id (``./`` and ``//`` aside) is in two concepts."""
    owner: dict[str, str] = {}
    for rec in concepts:
        for im in rec.train_images + rec.test_images:
            first = owner.setdefault(image_key(im.image), rec.concept)
            if first != rec.concept:
                raise ClearglassError(f"image {im.image!r} is in concept {first!r} and in concept {rec.concept!r}: "
                                      "expected each image in one concept (clearglass validate lists every problem)")


def _no_pairs_why(index: GroupIndex) -> str:
    """Why groups were skipped, for the error of a batch that cannot be filled."""
    if not index.images_without_captions:
        return ""
    return (f"; {index.images_without_captions} train image(s) have no non-empty {index.caption_field} (set "
            "caption_field, or fill the captions)")


def _rank_slice(size: int, rank: int, world_size: int, what: str) -> slice:
    """The contiguous part of a global batch of ``size`` items that belongs to ``rank``."""
    if size % world_size:
        raise ClearglassError(f"{what} = {size} is not divisible by the world size {world_size}")
    per_rank = size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


class EpochSampler(abc.ABC):
    """Seeded, resumable iteration shared by every sampler here (the base type ``train`` builds and resumes):
    batch ``b`` of epoch ``e`` depends only on (seed, e, b)."""

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ClearglassError(f"rank {rank} is outside the world of size {world_size}")
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._order_key: tuple[int, int] | None = None
        self._order_cache = np.empty(0, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch."""
        self.epoch = epoch
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """Epoch and position (the next batch index) for exact resume."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at the saved epoch and position."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    @abc.abstractmethod
    def __len__(self) -> int:
        """Batches per epoch."""

    @abc.abstractmethod
    def global_batch(self, epoch: int, index: int) -> list[Any]:
        """The whole (all-rank) batch ``index`` of ``epoch``."""

    @abc.abstractmethod
    def _rank_part(self, keys: list[Any]) -> list[Any]:
        """This rank's contiguous slice of a global batch."""

    def __iter__(self) -> Iterator[list[PairKey]]:
        """This rank's batches from the current position to the end of the epoch; the position advances as it goes."""
        while self.position < len(self):
            keys = self.rank_batch(self.epoch, self.position)
            self.position += 1
            yield keys

    def rank_batch(self, epoch: int, index: int) -> list[Any]:
        """This rank's part of global batch ``index`` of ``epoch`` (what the iterator yields there)."""
        return self._rank_part(self.global_batch(epoch, index))

    def _rng(self, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index, stream])

    def _order(self, epoch: int, n: int) -> np.ndarray:
        """The seeded permutation of ``n`` items for ``epoch``, computed once per epoch."""
        if self._order_key != (epoch, n):
            self._order_key = (epoch, n)
            self._order_cache = np.random.default_rng([self.seed, epoch]).permutation(n)
        return self._order_cache


class GroupBatchSampler(EpochSampler):
    """Global batches of M groups x N pairs: ``anchors`` anchor groups, each followed by its hard-negative groups.

    An epoch visits every group once as an anchor (a seeded permutation; the last incomplete batch is dropped).
    Each anchor brings up to M/anchors - 1 of its hard-negative groups not yet in the batch, and random other groups
    fill what its hard negatives cannot. Within a group, N images are drawn without replacement (with replacement
    when the group has fewer than N), each with one random caption. Rank r takes groups [r*M/W, (r+1)*M/W).
    """

    def __init__(
        self,
        index: GroupIndex,
        groups_per_batch: int,
        pairs_per_group: int,
        seed: int = 0,
        anchors_per_batch: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, rank, world_size)
        if groups_per_batch < 1 or pairs_per_group < 1 or anchors_per_batch < 1:
            raise ClearglassError("groups_per_batch, pairs_per_group and anchors_per_batch must be >= 1")
        if groups_per_batch % anchors_per_batch:
            raise ClearglassError(
                f"groups_per_batch = {groups_per_batch} is not divisible by anchors_per_batch = {anchors_per_batch}"
            )
        if len(index) < groups_per_batch:
            raise ClearglassError(
                f"the dataset has {len(index)} train groups; a batch needs groups_per_batch = {groups_per_batch}"
                f" distinct groups (skipped: {len(index.skipped)}, held out: {len(index.held_out)})"
                f"{_no_pairs_why(index)}"
            )
        _rank_slice(groups_per_batch, rank, world_size, "groups_per_batch")
        self.index = index
        self.groups_per_batch = groups_per_batch
        self.pairs_per_group = pairs_per_group
        self.anchors_per_batch = anchors_per_batch

    def __len__(self) -> int:
        """Batches per epoch: one anchor per group, ``anchors_per_batch`` anchors per batch."""
        return len(self.index) // self.anchors_per_batch

    def batch_groups(self, epoch: int, index: int) -> list[int]:
        """The group indices of global batch ``index``: anchors, each followed by its negatives."""
        rng = self._rng(epoch, index, stream=0)
        order = self._order(epoch, len(self.index))
        anchors = [int(g) for g in order[index * self.anchors_per_batch:(index + 1) * self.anchors_per_batch]]
        used = set(anchors)
        per_anchor = self.groups_per_batch // self.anchors_per_batch - 1
        groups: list[int] = []
        for anchor in anchors:
            groups.append(anchor)
            candidates = [g for g in self.index.groups[anchor].hard_negatives if g not in used]
            take = min(per_anchor, len(candidates))
            chosen = [candidates[i] for i in rng.choice(len(candidates), size=take, replace=False)] if take else []
            while len(chosen) < per_anchor:
                g = int(rng.integers(len(self.index)))
                if g not in used and g not in chosen:
                    chosen.append(g)
            used.update(chosen)
            groups.extend(chosen)
        return groups

    def global_batch(self, epoch: int, index: int) -> list[PairKey]:
        """All M*N pairs of global batch ``index``, group by group."""
        groups = self.batch_groups(epoch, index)
        rng = self._rng(epoch, index, stream=1)
        keys = []
        field = self.index.caption_field
        for g in groups:
            images = self.index.groups[g].images
            short = len(images) < self.pairs_per_group
            for i in rng.choice(len(images), size=self.pairs_per_group, replace=short):
                n_captions = len(getattr(images[i], field))
                keys.append(PairKey(g, int(i), int(rng.integers(n_captions)), int(rng.integers(2**31))))
        return keys

    def _rank_part(self, keys: list[PairKey]) -> list[PairKey]:
        part = _rank_slice(self.groups_per_batch, self.rank, self.world_size, "groups_per_batch")
        n = self.pairs_per_group
        return keys[part.start * n:part.stop * n]


class RandomPairSampler(EpochSampler):
    """Global batches of B random pairs (the CLIP baseline): each epoch is a seeded permutation of the train images,
    each with one random caption; the last incomplete batch is dropped. Rank r takes pairs [r*B/W, (r+1)*B/W).
    """

    def __init__(self, index: GroupIndex, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        self.index = index
        self.batch_size = batch_size
        self.images = [(g, i) for g, group in enumerate(index.groups) for i in range(len(group.images))]
        if len(self.images) < batch_size:
            raise ClearglassError(f"the dataset has {len(self.images)} train images with a caption; a batch needs "
                                  f"{batch_size}{_no_pairs_why(index)}")
        _rank_slice(batch_size, rank, world_size, "batch size")

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.images) // self.batch_size

    def global_batch(self, epoch: int, index: int) -> list[PairKey]:
        """All B pairs of global batch ``index``."""
        order = self._order(epoch, len(self.images))
        rng = self._rng(epoch, index)
        field = self.index.caption_field
        keys = []
        for j in order[index * self.batch_size:(index + 1) * self.batch_size]:
            g, i = self.images[j]
            n_captions = len(getattr(self.index.groups[g].images[i], field))
            keys.append(PairKey(g, i, int(rng.integers(n_captions)), int(rng.integers(2**31))))
        return keys

    def _rank_part(self, keys: list[PairKey]) -> list[PairKey]:
        return keys[_rank_slice(self.batch_size, self.rank, self.world_size, "batch size")]


class PairDataset(torch.utils.data.Dataset):
    """Loads the pair of a ``PairKey``: the image through ``transform`` and the caption through ``tokenizer``.

    Augmentation randomness is seeded by the key, so a pair's tensor does not depend on workers, ranks or resumes.
    Every image id is resolved when the dataset is made: an id outside ``image_root`` (unless it is an ``ImageRoot``
    that allows it, see `clearglass.magic.schema.resolve_image_path`) raises ``ClearglassError`` naming the record
    then, before any step; a missing or unreadable image raises it, naming the file and the record, when loaded. With
    ``cache_images`` the decoded RGB images are kept in memory (per worker process).
    """

    def __init__(
        self,
        index: GroupIndex,
        image_root: str | Path | ImageRoot,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        cache_images: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.index = index
        self.max_pixels = max_pixels
        self.image_root = image_root if isinstance(image_root, ImageRoot) else ImageRoot(Path(image_root))
        self.transform = transform
        self.tokenizer = tokenizer
        self.cache_images = cache_images
        self._images: dict[tuple[int, int], Image.Image] = {}
        self._tokens: dict[str, torch.Tensor] = {}
        self._paths = {(g, i): self._resolve(g, i) for g, group in enumerate(index.groups)
                       for i in range(len(group.images))}  # every id checked before the first step

    def _what(self, group: int, image: int) -> str:
        record = self.index.groups[group].images[image]
        return (f"concept {self.index.groups[group].concept!r}, train image {record.image!r}; image root "
                f"{self.image_root.folder}, set by images=DIR")

    def _resolve(self, group: int, image: int) -> Path:
        try:
            return resolve_image_path(self.image_root, self.index.groups[group].images[image].image)
        except ClearglassError as e:
            raise ClearglassError(f"{e} ({self._what(group, image)})") from None

    def __len__(self) -> int:
        """Number of (image, caption) pairs."""
        return self.index.num_pairs()

    def load_image(self, group: int, image: int) -> Image.Image:
        """The decoded RGB image of one record."""
        if (group, image) in self._images:
            return self._images[group, image]
        rgb = load_image(self._paths[group, image], self._what(group, image), self.max_pixels)
        if self.cache_images:
            self._images[group, image] = rgb
        return rgb

    def tokens(self, text: str) -> torch.Tensor:
        """The token row of one caption, (L,)."""
        if text not in self._tokens:
            self._tokens[text] = self.tokenizer([text])[0]
        return self._tokens[text]

    def _pair(self, key: PairKey) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair of one key; the caller has forked the global torch RNG."""
        record = self.index.groups[key.group].images[key.image]
        caption = getattr(record, self.index.caption_field)[key.caption]
        image = self.load_image(key.group, key.image)
        # seeds the CPU transforms only: torch.manual_seed (all devices) costs ~100x more
        torch.default_generator.manual_seed(key.seed)
        return self.transform(image), self.tokens(caption)

    def __getitem__(self, key: PairKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (C, H, W), tokens (L,)) of one pair."""
        with torch.random.fork_rng(devices=[]):
            return self._pair(key)

    def __getitems__(self, keys: list[PairKey]) -> list[tuple[torch.Tensor, torch.Tensor, PairKey]]:
        """The pairs of a batch of keys with their keys (what the DataLoader fetches), forking the global RNG once."""
        with torch.random.fork_rng(devices=[]):
            return [(*self._pair(key), key) for key in keys]


@dataclass
class Batch:
    """One batch of M groups x N pairs and what a training step needs besides pixels and tokens."""

    images: torch.Tensor  # (M, N, C, H, W)
    tokens: torch.Tensor  # (M, N, L)
    keys: list[PairKey]  # (M*N,) group by group
    level2: torch.Tensor  # (M,) level2 id of each group (GroupIndex.level2_ids)
    negatives: torch.Tensor | None = None  # (K, L) tokens of synthetic negative captions, added by the caller

    def pin_memory(self) -> Batch:
        """The batch in pinned memory (the DataLoader calls this with pin_memory=True)."""
        return replace(self, images=self.images.pin_memory(), tokens=self.tokens.pin_memory())


class GroupCollate:
    """Stacks a batch of pairs, group by group, into a :class:`Batch`."""

    def __init__(self, pairs_per_group: int, level2_ids: list[int] | None = None) -> None:
        self.pairs_per_group = pairs_per_group
        self.level2_ids = level2_ids

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor, PairKey]]) -> Batch:
        """Images (M, N, C, H, W), tokens (M, N, L), the keys and the groups' level2 ids (M,)."""
        n = self.pairs_per_group
        images = torch.stack([im for im, _, _ in items])  # (M*N, C, H, W)
        tokens = torch.stack([tok for _, tok, _ in items])  # (M*N, L)
        keys = [key for _, _, key in items]
        groups = [k.group for k in keys[::n]]
        level2 = torch.tensor([self.level2_ids[g] for g in groups] if self.level2_ids is not None else groups)
        return Batch(images.unflatten(0, (-1, n)), tokens.unflatten(0, (-1, n)), keys, level2)


def make_loader(
    dataset: torch.utils.data.Dataset,
    sampler: EpochSampler,
    collate: Callable[[list[Any]], Any],
    num_workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over the sampler's batches; its own generator keeps the global torch RNG untouched."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


def text_pretrain_pairs(concepts: list[ConceptRecord]) -> list[tuple[str, str]]:
    """Caption pre-training pairs from train images: (original caption, new caption) and (original caption, level
    word)."""
    pairs = []
    for rec in concepts:
        for im in rec.train_images:
            targets = list(im.new_captions) + [w for w in im.levels() if w]
            pairs.extend((old, target) for old in im.old_captions for target in targets)
    return pairs


class TextPairSampler(EpochSampler):
    """Global batches of B text pairs for caption pre-training: a seeded permutation per epoch, last batch dropped."""

    def __init__(self, num_pairs: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        if num_pairs < batch_size:
            raise ClearglassError(f"caption pre-training has {num_pairs} text pairs; a batch needs {batch_size}")
        _rank_slice(batch_size, rank, world_size, "batch size")
        self.num_pairs = num_pairs
        self.batch_size = batch_size

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.num_pairs // self.batch_size

    def global_batch(self, epoch: int, index: int) -> list[int]:  # type: ignore[override]
        """Pair indices of global batch ``index``."""
        order = self._order(epoch, self.num_pairs)
        return [int(j) for j in order[index * self.batch_size:(index + 1) * self.batch_size]]

    def _rank_part(self, keys: list[Any]) -> list[Any]:
        return keys[_rank_slice(self.batch_size, self.rank, self.world_size, "batch size")]


class TextPairDataset(torch.utils.data.Dataset):
    """Tokenised text pairs for caption pre-training."""

    def __init__(self, pairs: list[tuple[str, str]], tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.pairs = pairs
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens of the original caption (L,), tokens of the target text (L,))."""
        rows = self.tokenizer(list(self.pairs[i]))  # (2, L)
        return rows[0], rows[1]


@dataclass
class TextBatch:
    """A batch of caption pre-training pairs."""

    old: torch.Tensor  # (B, 1, L) original captions
    target: torch.Tensor  # (B, 1, L) their new captions or concept words

    def pin_memory(self) -> TextBatch:
        """The batch in pinned memory."""
        return TextBatch(self.old.pin_memory(), self.target.pin_memory())


def collate_text_pairs(items: list[tuple[torch.Tensor, torch.Tensor]]) -> TextBatch:
    """Stacks (old, target) token rows into a :class:`TextBatch`."""
    return TextBatch(torch.stack([a for a, _ in items])[:, None], torch.stack([b for _, b in items])[:, None])
