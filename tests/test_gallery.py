"""The picture gallery: the table's recognition items and hits, balanced seeded sampling, each model's pick among
the K candidates, and the section's HTML, on hand-built encoders."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, evaluate_model, make_recognition_items
from clearglass.gallery import gallery_html, gallery_picks, sample_gallery, split_trials, table_hits
from clearglass.magic.schema import ConceptRecord, ImageRecord
from test_evaluate import ConceptEncoder, RandomEncoder

KINDS = {"test_seen": "base", "test_novel": "novel", "test_held_out": "novel, unseen object"}
CONFIG = EvalConfig(k=3, fields=["concept_level1", "concept_level2"], levels=[1, 2],
                    tasks=["recognition", "zero_shot", "retrieval"], retrieval_ks=[1, 5], n_boot=50)


def kind_concepts(n_images: int = 3) -> dict[str, list[ConceptRecord]]:
    """Three splits of 4 concepts (level1 thing{i}, level2 group{j % 3}, hard negative its pair), as the demo's
    base, novel and unseen-object concepts; the base concepts have one training image each."""
    out = {}
    for s, split in enumerate(KINDS):
        concepts = []
        for j in range(4):
            i = 4 * s + j
            images = [ImageRecord(f"c{i}_{m}.png", [f"caption {m} of thing{i}"], [f"scene {m} with thing{i}"],
                                  f"thing{i}", f"group{j % 3}", f"kind{j % 2}", "entity") for m in range(n_images)]
            concepts.append(ConceptRecord(f"thing{i}", [f"thing{4 * s + (j ^ 1)}"],
                                          images[:1] if split == "test_seen" else [], images))
        out[split] = concepts
    return out


def write_images(root: Path, concepts: list[ConceptRecord]) -> None:
    """One small PNG per test image: its concept's colour with a white square placed by the image's index."""
    for i, c in enumerate(concepts):
        colour = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 160, 20), (150, 60, 190), (20, 170, 170)][i % 6]
        for j, im in enumerate(c.test_images):
            a = np.zeros((48, 48, 3), np.uint8) + np.array(colour, np.uint8)
            a[4 + 6 * j:20 + 6 * j, 8:24] = 255
            Image.fromarray(a).save(root / im.image)


class Salted(RandomEncoder):
    """Another fixed random unit vector per image name and text."""

    def __init__(self, dim: int, salt: str):
        super().__init__(dim)
        self.salt = salt

    def _vec(self, key: str) -> torch.Tensor:
        return super()._vec(self.salt + key)


class Blend:
    """The normalised ``w * a + (1 - w) * b`` of two encoders: a partly right model."""

    def __init__(self, a, b, w: float):
        self.a, self.b, self.w = a, b, w

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.w * x + (1 - self.w) * y, dim=-1)

    def embed_images(self, paths):
        return self._mix(self.a.embed_images(paths), self.b.embed_images(paths))

    def embed_texts(self, texts):
        return self._mix(self.a.embed_texts(texts), self.b.embed_texts(texts))


def seeded_encoders(concepts: list[ConceptRecord]) -> dict[str, list]:
    """Per model, one encoder per seed: a random base, a weak clip and a stronger clear_glass (two seeds each)."""
    truth = ConceptEncoder(concepts)
    dim = len(truth.dim)
    return {"base": [Salted(dim, "base")],
            "clip": [Blend(truth, Salted(dim, f"clip{s}"), 0.35) for s in range(2)],
            "clear_glass": [Blend(truth, Salted(dim, f"cg{s}"), 0.6) for s in range(2)]}


def test_trials_are_the_items_the_results_were_scored_on_and_hits_add_up_to_their_figure():
    concepts = kind_concepts()["test_seen"]
    results = evaluate_model(RandomEncoder(), concepts, "/nonexistent-root", CONFIG, model="random")
    trials = split_trials("test_seen", concepts, results["config"])
    assert trials.k == 3 and sorted(trials.items) == [1, 2]
    assert trials.items[1] == make_recognition_items(concepts, "concept_level1", 3, 0, CONFIG.template)
    assert trials.labels(1, 0)[0] == concepts[0].test_images[0].level1 and len(trials.labels(2, 0)) == 3
    hits = table_hits(trials, results)
    for lv in (1, 2):
        ranks = np.array(results["per_item"][f"recognition/concept_level{lv}"]["arrays"]["i2t_rank"])
        assert hits[lv].seeds == 1 and hits[lv].counts.tolist() == (ranks == 0).astype(int).tolist()
        row = next(r for r in results["metrics"] if r["unit"] == f"recognition/concept_level{lv}/i2t_rank"
                   and r["metric"] == "i2t_R@1")
        assert hits[lv].value == row["value"] == hits[lv].counts.mean()
    other = split_trials("test_seen", concepts, {**results["config"], "seed": 1})
    with pytest.raises(ClearglassError, match="scored on other items"):
        table_hits(other, results)
    no_level2 = split_trials("test_seen", concepts, {**results["config"], "fields": ["concept_level1"]})
    assert sorted(no_level2.items) == [1]


def merged_hits(concepts: dict[str, list[ConceptRecord]]) -> tuple[dict, dict]:
    """Per split: the trials, and every model's hits from its seeds' results merged as the demo merges them."""
    from clearglass.experiments.seeds import merge_seeds

    everything = [c for cs in concepts.values() for c in cs]
    trials, hits = {}, {}
    for split, cs in concepts.items():
        results = {m: merge_seeds([evaluate_model(e, cs, "/nonexistent-root", CONFIG, model=m) for e in encs])
                   for m, encs in seeded_encoders(everything).items()}
        trials[split] = split_trials(split, cs, results["base"]["config"])
        hits[split] = {m: table_hits(trials[split], r) for m, r in results.items()}
    return trials, hits


def test_sampling_is_seeded_spread_over_concepts_and_balanced_over_outcomes():
    concepts = kind_concepts(n_images=6)
    trials, hits = merged_hits(concepts)
    assert {h["clip"][1].seeds for h in hits.values()} == {2} and hits["test_seen"]["base"][1].seeds == 1
    items = sample_gallery(list(trials.values()), 9, seed=0, hits=hits)
    assert items == sample_gallery(list(trials.values()), 9, seed=0, hits=hits)
    assert items != sample_gallery(list(trials.values()), 9, seed=1, hits=hits)
    assert Counter(it.split for it in items) == {split: 9 for split in KINDS}
    assert len({(it.concept, it.image) for it in items}) == len(items)
    for split in KINDS:
        def outcome(i: int, split: str = split) -> str:
            right = [2 * h[1].counts[i] > h[1].seeds for h in hits[split].values()]
            return "all-right" if all(right) else "all-wrong" if not any(right) else "mixed"

        mine = [it for it in items if it.split == split]
        assert len({it.concept for it in mine}) >= 3
        piles = Counter(outcome(i) for i in range(len(trials[split].items[1])))
        shown = Counter(outcome(it.positions[1]) for it in mine)
        assert len(piles) >= 2 and set(shown) == set(piles), (piles, shown)
        assert all(shown[o] == piles[o] or shown[o] >= max(shown.values()) - 1 for o in piles), (piles, shown)
        for it in mine:  # positions name the same picture at both levels
            for lv, i in it.positions.items():
                assert trials[split].items[lv][i].images[0] == it.image
                assert trials[split].items[lv][i].concepts[0] == it.concept
    everything = sample_gallery(list(trials.values()), 1000)  # no hits: every picture, none twice
    assert len(everything) == sum(len(t.items[1]) for t in trials.values()) == len(set(map(str, everything)))


def test_picks_are_among_the_tables_candidates_and_agree_with_its_hits():
    concepts = kind_concepts()
    everything = [c for cs in concepts.values() for c in cs]
    trials = {s: split_trials(s, cs, asdict(CONFIG)) for s, cs in concepts.items()}
    items = sample_gallery(list(trials.values()), 5)
    encoder = ConceptEncoder(everything)
    picks = gallery_picks(encoder, items, trials, "/nonexistent-root")
    n_texts = len({t for it in items for lv, i in it.positions.items() for t in trials[it.split].items[lv][i].texts})
    assert encoder.calls == {"images": len(items), "texts": n_texts}
    assert all(p[lv]["pick"] == 0 and len(p[lv]["scores"]) == 3 for p in picks for lv in (1, 2))
    adversarial = gallery_picks(ConceptEncoder(everything, sign=-1), items, trials, "/nonexistent-root")
    assert all(p[1]["pick"] != 0 for p in adversarial)
    weak = seeded_encoders(everything)["clip"][0]  # its pick is right exactly where the table counts a hit
    for split, cs in concepts.items():
        hits = table_hits(trials[split], evaluate_model(weak, cs, "/nonexistent-root", CONFIG))
        for it, p in zip(items, gallery_picks(weak, items, trials, "/nonexistent-root")):
            if it.split == split:
                assert all((p[lv]["pick"] == 0) == bool(hits[lv].counts[i]) for lv, i in it.positions.items())


@pytest.fixture()
def section(tmp_path: Path) -> tuple[str, list, dict, dict]:
    concepts = kind_concepts()
    everything = [c for cs in concepts.values() for c in cs]
    write_images(tmp_path, everything)
    trials, hits = merged_hits(concepts)
    items = sample_gallery(list(trials.values()), 4, hits=hits)
    picks = {m: gallery_picks(encs[0], items, trials, tmp_path) for m, encs in seeded_encoders(everything).items()}
    return gallery_html(items, picks, trials, hits, KINDS, tmp_path), items, picks, hits


def test_gallery_cards_show_every_model_pick_marked_by_the_tables_hits(section):
    html, items, picks, hits = section
    assert html.count('class="card"') == len(items) == 12
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(items)
    for n, (_split, label) in enumerate(KINDS.items()):
        assert html.count(f'<span class="badge kind{n}">{label}</span>') == 4 + 1  # 4 cards and the legend
    cells = re.findall(r'<td class="(right|wrong|part)" data-key="(\d)-(\w+)-(\d)" data-hits="(\d)"', html)
    assert len(cells) == len(items) * len(picks) * 2
    expected = Counter((str(n), it.split, str(lv), str(hits[it.split][m][lv].counts[i]))
                       for it in items for n, m in enumerate(picks) for lv, i in it.positions.items())
    assert Counter(c[1:] for c in cells) == expected
    assert {c[0] for c in cells} >= {"right", "wrong"}
    assert all(c[0] == ("right" if int(c[4]) == (1 if c[1] == "0" else 2) else "wrong" if c[4] == "0" else "part")
               for c in cells)
    for m in picks:  # the scoreboard quotes the table's figure and its hits over every picture
        for split in KINDS:
            for lv in (1, 2):
                h = hits[split][m][lv]
                cell = re.search(rf'data-model="{m}" data-split="{split}" data-level="{lv}" data-value="([\d.]+)">'
                                 r'<b>[\d.]+%</b> <span class="all">(\d+)/(\d+)</span>', html)
                assert float(cell.group(1)) == round(100 * h.value, 1)
                assert (int(cell.group(2)), int(cell.group(3))) == (h.counts.sum(), len(h.counts) * h.seeds)
    kinds = re.search(r'<select id="kind">(.*?)</select>', html).group(1)
    assert [unescape(x) for x in re.findall(r">([^<]+)</option>", kinds)] == ["every kind", *KINDS.values()]


def test_gallery_refuses_picks_of_other_items_and_models_without_hits(section, tmp_path):
    _, items, picks, hits = section
    trials = {s: split_trials(s, cs, asdict(CONFIG)) for s, cs in kind_concepts().items()}
    with pytest.raises(ClearglassError, match="not for the"):
        gallery_html(items, {"clip": picks["clip"][1:]}, trials, hits, KINDS, tmp_path)
    with pytest.raises(ClearglassError, match="no table hits"):
        gallery_html(items, {"other": picks["clip"]}, trials, hits, KINDS, tmp_path)
    with pytest.raises(ClearglassError, match="no model's picks"):
        gallery_html(items, {}, trials, hits, KINDS, tmp_path)


@pytest.mark.parametrize("template", ["a photo of {}.", "{}", "a {{b}} {}", "{{}} {} }}"])
def test_labels_take_the_formatted_template_off_braces_included(template):
    from clearglass.evaluate import Item
    from clearglass.gallery import Trials

    names = ("cat", "wild dog")
    item = Item(names, ("a.png", "b.png"), tuple(template.format(n) for n in names))
    assert Trials("test", 2, template, {1: [item]}).labels(1, 0) == list(names)
