"""Batches of groups: sampler invariants, determinism, epochs, DDP slices, resume, datasets and collation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image
from torchvision import transforms

from clearglass.data import (
    GroupBatchSampler,
    GroupCollate,
    GroupIndex,
    PairDataset,
    PairKey,
    RandomPairSampler,
    TextPairSampler,
    make_loader,
    text_pretrain_pairs,
)
from clearglass.errors import ClearglassError
from clearglass.magic.schema import ImageRoot, load_concepts
from tiny_magic import write_tiny_magic


def toy_tokenizer(texts: list[str], length: int = 8) -> torch.Tensor:
    """Words -> small ints, padded to ``length``: (len(texts), length)."""
    rows = torch.zeros(len(texts), length, dtype=torch.long)
    for r, text in enumerate(texts):
        ids = [sum(map(ord, w)) % 997 + 1 for w in text.split()][:length]
        rows[r, :len(ids)] = torch.tensor(ids)
    return rows


@pytest.fixture(scope="module")
def magic(tmp_path_factory):
    root = tmp_path_factory.mktemp("magic")
    path = write_tiny_magic(root, concepts=8, images_per_concept=4, held_out=1)
    return root, path, load_concepts(path)


def test_index_excludes_held_out_and_precomputes_hard_negatives(magic):
    _, _, concepts = magic
    index = GroupIndex(concepts)
    assert len(index) == 8 and index.held_out == ["concept8"]
    assert all(index.groups[index.index_of[c.concept]].concept == c.concept for c in concepts if c.train_images)
    for g in index.groups:  # slow oracle: scan the records by name
        rec = next(c for c in concepts if c.concept == g.concept)
        expected = [n for n in rec.hard_negative if any(c.concept == n and c.train_images for c in concepts)]
        assert [index.groups[i].concept for i in g.hard_negatives] == expected
    assert "concept8" not in [index.groups[i].concept for g in index.groups for i in g.hard_negatives]


def test_short_groups_skip_counts_and_replace_keeps(magic):
    _, _, concepts = magic
    concepts = [c for c in concepts]
    concepts[0] = type(concepts[0])(concepts[0].concept, concepts[0].hard_negative, concepts[0].train_images[:2])
    skipping = GroupIndex(concepts, min_images=3, short_groups="skip")
    assert skipping.skipped == ["concept0"] and len(skipping) == 7
    replacing = GroupIndex(concepts, min_images=3, short_groups="replace")
    assert len(replacing) == 8
    sampler = GroupBatchSampler(replacing, groups_per_batch=2, pairs_per_group=3, seed=1)
    short = replacing.index_of["concept0"]
    seen = [k for e in range(3) for b in range(len(sampler)) for k in sampler.global_batch(e, b) if k.group == short]
    assert seen and all(k.image < 2 for k in seen)


def test_group_batches_distinct_groups_right_concept_and_hard_negatives(magic):
    _, _, concepts = magic
    index = GroupIndex(concepts)
    sampler = GroupBatchSampler(index, groups_per_batch=3, pairs_per_group=2, seed=0)
    assert len(sampler) == 8
    anchors = []
    for b in range(len(sampler)):
        groups = sampler.batch_groups(0, b)
        keys = sampler.global_batch(0, b)
        assert len(groups) == len(set(groups)) == 3 and len(keys) == 6
        assert [k.group for k in keys] == [g for g in groups for _ in range(2)]
        for k in keys:
            assert 0 <= k.image < len(index.groups[k.group].images)
            assert 0 <= k.caption < len(index.groups[k.group].images[k.image].new_captions)
        anchor = groups[0]
        negatives = set(index.groups[anchor].hard_negatives)
        # concepts have 1 or 2 hard negatives: all are used, the rest is random
        assert negatives <= set(groups[1:])
        anchors.append(anchor)
    assert sorted(anchors) == list(range(8))  # every group is an anchor once per epoch


def test_determinism_epochs_and_resume(magic):
    _, _, concepts = magic
    index = GroupIndex(concepts)
    a = GroupBatchSampler(index, 4, 2, seed=3, anchors_per_batch=2)
    b = GroupBatchSampler(index, 4, 2, seed=3, anchors_per_batch=2)
    assert list(a) == list(b)
    a.set_epoch(0)
    epoch0 = list(a)
    a.set_epoch(1)
    assert list(a) != epoch0
    assert list(GroupBatchSampler(index, 4, 2, seed=4, anchors_per_batch=2)) != epoch0
    c = GroupBatchSampler(index, 4, 2, seed=3, anchors_per_batch=2)
    it = iter(c)
    first = [next(it), next(it)]
    state = c.state_dict()
    d = GroupBatchSampler(index, 4, 2, seed=3, anchors_per_batch=2)
    d.load_state_dict(state)
    assert first + list(d) == epoch0


def test_ddp_ranks_are_disjoint_and_union_is_the_global_batch(magic):
    _, _, concepts = magic
    index = GroupIndex(concepts)
    single = list(GroupBatchSampler(index, 4, 2, seed=5, anchors_per_batch=2))
    ranks = [list(GroupBatchSampler(index, 4, 2, seed=5, anchors_per_batch=2, rank=r, world_size=2)) for r in range(2)]
    for whole, r0, r1 in zip(single, *ranks):
        assert not {k.group for k in r0} & {k.group for k in r1}
        assert r0 + r1 == whole
        # each rank holds one anchor (its first group) followed by that anchor's hard negatives
        anchors = {r0[0].group, r1[0].group}
        for part in (r0, r1):
            negatives = set(index.groups[part[0].group].hard_negatives)
            assert negatives & {k.group for k in part[2:]} or negatives <= anchors
    with pytest.raises(ClearglassError, match="not divisible"):
        GroupBatchSampler(index, 3, 2, rank=0, world_size=2)
    with pytest.raises(ClearglassError, match="distinct groups"):
        GroupBatchSampler(index, 9, 2)


def test_random_pairs_sampler(magic):
    _, _, concepts = magic
    index = GroupIndex(concepts)
    sampler = RandomPairSampler(index, batch_size=6, seed=0)
    assert len(sampler) == 32 // 6
    seen = [(k.group, k.image) for batch in sampler for k in batch]
    assert len(seen) == len(set(seen)) == 30
    ranks = [list(RandomPairSampler(index, 6, seed=0, rank=r, world_size=2)) for r in range(2)]
    sampler.set_epoch(0)
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == list(sampler)
    sampler.set_epoch(1)
    assert [(k.group, k.image) for batch in sampler for k in batch] != seen


def test_dataset_loads_collates_and_seeds_augmentation(magic):
    root, _, concepts = magic
    index = GroupIndex(concepts)
    transform = transforms.Compose([transforms.RandomResizedCrop(16, scale=(0.2, 1.0)), transforms.ToTensor()])
    dataset = PairDataset(index, root, transform, toy_tokenizer, cache_images=True)
    sampler = GroupBatchSampler(index, 4, 3, seed=0)
    batch = next(iter(make_loader(dataset, sampler, GroupCollate(3, index.level2_ids()))))
    images, tokens = batch.images, batch.tokens
    assert images.shape == (4, 3, 3, 16, 16) and tokens.shape == (4, 3, 8)
    keys = sampler.global_batch(0, 0)
    assert batch.keys == keys  # the batch carries its keys and its groups' level2 ids
    assert batch.level2.tolist() == [index.level2_ids()[k.group] for k in keys[::3]]
    for m in range(4):
        for n in range(3):
            key = keys[m * 3 + n]
            pixels, row = dataset[key]
            assert torch.equal(images[m, n], pixels)
            caption = index.groups[key.group].images[key.image].new_captions[key.caption]
            assert torch.equal(tokens[m, n], toy_tokenizer([caption])[0])
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    dataset[keys[0]]
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched
    assert not torch.equal(dataset[keys[0]][0], dataset[keys[0]._replace(seed=keys[0].seed + 1)][0])


def test_missing_or_unreadable_image_names_file_and_record(magic, tmp_path):
    _, _, concepts = magic
    index = GroupIndex(concepts)
    dataset = PairDataset(index, tmp_path, transforms.ToTensor(), toy_tokenizer)
    with pytest.raises(ClearglassError, match=r"concept0_0\.png: image file not found \(concept 'concept0'"):
        dataset[PairKey(index.index_of["concept0"], 0, 0, 0)]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "concept0_0.png").write_bytes(b"not a png")
    with pytest.raises(ClearglassError, match="not a readable image"):
        dataset[PairKey(index.index_of["concept0"], 0, 0, 0)]


def test_text_pretrain_pairs_and_sampler(magic):
    _, _, concepts = magic
    pairs = text_pretrain_pairs(concepts)
    # per image: 2 old captions x (2 new captions + 3 level words)
    assert len(pairs) == 8 * 4 * 2 * 5
    assert ("a photo of thing 0 number 0", "concept0") in pairs
    sampler = TextPairSampler(len(pairs), 16, seed=0)
    flat = [i for batch in sampler for i in batch]
    assert len(flat) == len(set(flat)) == 16 * 20


def test_unknown_hard_negatives_are_counted(magic):
    _, _, concepts = magic
    concepts = [replace(c, hard_negative=c.hard_negative + ["no-such-concept"]) if k < 3 else c
                for k, c in enumerate(concepts)]
    index, plain = GroupIndex(concepts), GroupIndex(magic[2])
    assert index.unknown_hard_negatives == 3
    assert [g.hard_negatives for g in index.groups] == [g.hard_negatives for g in plain.groups]  # dropped
    assert plain.unknown_hard_negatives == 0  # concept7's held-out negative concept8 is a concept: not unknown


def test_images_outside_the_root_are_refused_before_any_step_unless_allowed(magic, tmp_path):
    _, _, concepts = magic
    outside = tmp_path / "outside.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(outside)
    (tmp_path / "root").mkdir()
    first = concepts[0]
    for image in (str(outside), "../outside.png"):
        moved = [replace(first, train_images=[replace(first.train_images[0], image=image)])] + concepts[1:]
        index = GroupIndex(moved)
        key = PairKey(index.index_of["concept0"], 0, 0, 0)
        with pytest.raises(ClearglassError, match=r"(absolute path|outside the image root).*\(concept 'concept0'"):
            PairDataset(index, tmp_path / "root", transforms.ToTensor(), toy_tokenizer)  # not when first drawn
        allowed = PairDataset(index, ImageRoot(tmp_path / "root", allow_outside=True), transforms.ToTensor(),
                              toy_tokenizer)
        assert torch.equal(allowed[key][0][:, 0, 0], torch.tensor([1, 2, 3]) / 255)
