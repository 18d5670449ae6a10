"""Training with the hierarchy options: synthetic caption negatives enter the outer loss, concept-level filling,
the multi-level objective with level2 ids from the group index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clearglass.data import GroupIndex
from clearglass.errors import ClearglassError
from clearglass.magic.schema import load_concepts, save_concepts
from clearglass.train import CONFIG_DIR, TrainConfig, train
from tiny_magic import write_tiny_magic, write_tiny_model

WORDS = [("apple", "banana"), ("cherry", "grape"), ("taxi", "bus"), ("boat", "ferry"), ("hawk", "owl"),
         ("horse", "zebra")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The tiny MAGIC data with captions that name concept-specific objects ("a red apple next to a banana")."""
    root = tmp_path_factory.mktemp("magic")
    write_tiny_model(root / "tiny-model.pt")
    path = write_tiny_magic(root, concepts=6, images_per_concept=3, held_out=0)
    concepts = load_concepts(path)
    for rec, (a, b) in zip(concepts, WORDS):
        for j, im in enumerate(rec.train_images):
            im.new_captions = [f"a red {a} next to a {b}", f"a picture of a {b} number {j}"]
    save_concepts(concepts, path)
    return path


def config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    items = [f"data={json.dumps(str(dataset))}", f"out={json.dumps(str(out))}",
             f"model={json.dumps(str(dataset.parent / 'tiny-model.pt'))}", "groups_per_batch=4", "pairs_per_group=2",
             "steps=2", "warmup=1", "log_every=1", "checkpoint_every=100", "device=\"cpu\"", "deterministic=true",
             "lock.lock_text=false"]
    items += [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return TrainConfig.load(CONFIG_DIR / "default-grouped.json", items)


def first_step(run: dict) -> dict:
    return json.loads(Path(run["metrics_path"]).read_text().splitlines()[0])


def test_caption_negatives_grow_the_outer_loss_and_are_counted(dataset, tmp_path):
    plain = train(config(dataset, tmp_path / "plain"))
    hard = train(config(dataset, tmp_path / "hard", **{"synthetic_negatives.caption": True,
                                                        "synthetic_negatives.per_caption": 2,
                                                        "synthetic_negatives.source": "groups"}))
    a, b = first_step(plain), first_step(hard)
    assert b["outer_loss"] > a["outer_loss"] + 1e-4  # same batch and weights, more image->text denominator terms
    assert b["inner_loss"] == pytest.approx(a["inner_loss"], rel=1e-5, abs=1e-6)
    assert hard["synthetic_negatives"]["groups"] == 2 * 4 * 2 * 2  # steps * M * N * per_caption
    assert plain["synthetic_negatives"] == {}
    again = train(config(dataset, tmp_path / "again", **{"synthetic_negatives.caption": True,
                                                         "synthetic_negatives.per_caption": 2,
                                                         "synthetic_negatives.source": "groups"}))
    assert first_step(again)["loss"] == b["loss"]  # seeded: the same negatives


def test_centroid_outer_with_caption_negatives_is_refused(dataset, tmp_path):
    with pytest.raises(ClearglassError, match="synthetic_negatives.caption needs loss.outer"):
        train(config(dataset, tmp_path, **{"synthetic_negatives.caption": True, "loss.outer": "centroid"}))


def test_concept_level_filling_fills_only_empty_lists(dataset, tmp_path):
    concepts = load_concepts(dataset)
    for rec in concepts[:3]:
        rec.hard_negative = []
    path = tmp_path / "magic.json"
    save_concepts(concepts, path)
    run = train(config(path, tmp_path / "run", images=str(dataset.parent), model=str(dataset.parent / "tiny-model.pt"),
                       **{"synthetic_negatives.concepts": True, "synthetic_negatives.concepts_per_group": 2}))
    assert run["filled_hard_negatives"] == ["concept0", "concept1", "concept2"]


def test_level2_ids_follow_the_parents(tmp_path):
    concepts = load_concepts(write_tiny_magic(tmp_path, concepts=5, held_out=0))
    concepts[4].train_images[0].level2 = None  # 1 of 4 images: the most common parent still wins
    index = GroupIndex(concepts)
    assert [g.level2 for g in index.groups] == ["family0", "family0", "family1", "family1", "family2"]
    for im in concepts[4].train_images:
        im.level2 = None
    assert GroupIndex(concepts).level2_ids() == [0, 0, 1, 1, 2]


def test_multilevel_objective_trains_with_level2_terms(dataset, tmp_path):
    run = train(config(dataset, tmp_path / "ml", **{"loss.kind": "multilevel", "loss.instance_weight": 0.5,
                                                    "loss.level2_weight": 0.25, "synthetic_negatives.caption": True}))
    terms = first_step(run)
    assert {"instance_loss", "level1_loss", "level2_loss"} <= set(terms)
    assert terms["loss"] == pytest.approx(0.5 * terms["instance_loss"] + terms["level1_loss"]
                                          + 0.25 * terms["level2_loss"], rel=1e-5)
    assert run["step"] == 2 and run["synthetic_negatives"]
