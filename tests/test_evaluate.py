"""Evaluation tasks on hand-built encoders whose answers are known by construction, plus fast-vs-slow parity."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.evaluate import (
    EvalConfig,
    ModelEncoder,
    _best_correct_rank,
    _class_recall,
    _kendall_tau_vs_order,
    bootstrap,
    evaluate_model,
    hierarchical,
    make_recognition_items,
    retrieval,
    score_recognition,
    strict_rank,
    zero_shot,
)
from clearglass.magic.schema import ConceptRecord, ImageRecord, resolve_image_path
from clearglass_testing.recognition_oracle import score_recognition_per_item

N_CONCEPTS, N_IMAGES = 6, 3


def make_concepts(n_concepts: int = N_CONCEPTS, n_images: int = N_IMAGES) -> list[ConceptRecord]:
    """Concept i: level1 thing{i}, level2 group{i//2}, level3 kind{i//3}, level4 entity; hard negative: its pair."""
    concepts = []
    for i in range(n_concepts):
        images = [ImageRecord(image=f"c{i}_{j}.png", old_captions=[f"caption {j} of thing{i}"],
                              new_captions=[f"scene {j} with thing{i}"], level1=f"thing{i}",
                              level2=f"group{i // 2}", level3=f"kind{i // 3}", level4="entity")
                  for j in range(n_images)]
        concepts.append(ConceptRecord(concept=f"thing{i}", hard_negative=[f"thing{i ^ 1}"], test_images=images))
    return concepts


class ConceptEncoder:
    """Image of concept i = normalised sum of one-hots of its level values; a text = one-hot of its last word.

    ``sign=-1`` makes it adversarial: every image points away from its own texts."""

    def __init__(self, concepts: list[ConceptRecord], sign: float = 1.0):
        words = sorted({v for c in concepts for im in c.test_images for v in im.levels() if v})
        self.dim = {w: i for i, w in enumerate(words)}
        self.levels = {im.image: im.levels()[:3] for c in concepts for im in c.test_images}
        self.sign = sign
        self.calls = {"images": 0, "texts": 0}

    def _onehot(self, words) -> torch.Tensor:
        v = torch.zeros(len(self.dim))
        for w in words:
            v[self.dim[w]] = 1.0
        return v / v.norm()

    def embed_images(self, paths):
        self.calls["images"] += len(paths)
        return torch.stack([self.sign * self._onehot(self.levels[Path(p).name]) for p in paths])

    def embed_texts(self, texts):
        self.calls["texts"] += len(texts)
        return torch.stack([self._onehot([t.split()[-1]]) for t in texts])


class RandomEncoder:
    """A fixed random unit vector per image name and per text (seeded by its sha256)."""

    def __init__(self, dim: int = 8):
        self.dim = dim

    def _vec(self, key: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
        v = torch.randn(self.dim, generator=g)
        return v / v.norm()

    def embed_images(self, paths):
        return torch.stack([self._vec("img:" + Path(p).name) for p in paths])

    def embed_texts(self, texts):
        return torch.stack([self._vec("txt:" + t) for t in texts])


ROOT = Path("/nonexistent-root")


# ---------------------------------------------------------------- items


def test_items_are_deterministic_distinct_and_prefer_hard_negatives():
    concepts = make_concepts()
    a = make_recognition_items(concepts, "concept_level1", 4, seed=3)
    assert a == make_recognition_items(concepts, "concept_level1", 4, seed=3)
    assert a != make_recognition_items(concepts, "concept_level1", 4, seed=4)
    assert len(a) == N_CONCEPTS * N_IMAGES
    for it in a:
        assert len(set(it.texts)) == 4 and len(set(it.concepts)) == 4
        pair = f"thing{int(it.concepts[0][5:]) ^ 1}"
        assert it.concepts[1] == pair  # the one hard negative is always taken first


def test_level_items_have_negatives_with_other_values():
    concepts = make_concepts()
    for it in make_recognition_items(concepts, "concept_level2", 3, seed=0, template="a picture of {}"):
        assert it.texts[0].startswith("a picture of group")
        assert len(set(it.texts)) == 3
    with pytest.raises(ClearglassError, match="smaller --k"):
        make_recognition_items(concepts, "concept_level3", 3, seed=0)  # only 2 distinct kinds


def test_item_errors():
    with pytest.raises(ClearglassError, match="unknown field"):
        make_recognition_items(make_concepts(), "level9", 3, 0)
    with pytest.raises(ClearglassError, match="only 3 concepts"):
        make_recognition_items(make_concepts(3), "concept_level1", 5, 0)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("field", ["new_caption", "old_caption", "concept_level1", "concept_level2"])
def test_recognition_one_hot_is_perfect_and_adversarial_is_zero(field):
    concepts = make_concepts()
    items = make_recognition_items(concepts, field, 3, seed=0)
    good = score_recognition(ConceptEncoder(concepts), items, ROOT)
    assert (good["i2t_rank"] == 0).all() and (good["t2i_rank"] == 0).all()
    bad = score_recognition(ConceptEncoder(concepts, sign=-1), items, ROOT)
    assert (bad["i2t_rank"] == 2).all()  # every wrong text (score 0) beats the true one (negative)


def test_recognition_fast_matches_per_item_oracle():
    concepts = make_concepts()
    items = make_recognition_items(concepts, "old_caption", 5, seed=1)
    fast = score_recognition(RandomEncoder(), items, ROOT)
    slow = score_recognition_per_item(RandomEncoder(), items, ROOT)
    assert np.array_equal(fast["i2t_rank"], slow["i2t_rank"]) and np.array_equal(fast["t2i_rank"], slow["t2i_rank"])
    assert len(np.unique(fast["i2t_rank"])) > 2  # random embeddings: ranks spread, not a constant answer


def test_nan_scores_never_make_a_hit_strict_rank_and_best_correct_rank_match_their_oracle():
    """A NaN compares false with everything, so `score >= true` alone counted no wrong candidate against a NaN
    truth (rank -1, a hit): the oracle counts every wrong candidate not certainly below the truth."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 6))
    scores[rng.random(scores.shape) < 0.2] = np.nan
    truth = rng.integers(0, 6, 40)
    slow = [sum(1 for j in range(6) if j != t and not s[j] < s[t]) for s, t in zip(scores, truth)]
    assert strict_rank(scores, truth).tolist() == slow
    assert (strict_rank(np.full((3, 5), np.nan), np.zeros(3, dtype=int)) == 4).all()  # all NaN: the worst, not 100%
    correct = rng.random((40, 6)) < 0.3
    correct[np.arange(40), truth] = True
    queries, candidates = rng.normal(size=(40, 3)), rng.normal(size=(6, 3))
    candidates[2, 0] = np.nan  # NaN scores for every query against candidate 2
    queries[5] = np.nan  # NaN scores for query 5 against everything
    sims = queries @ candidates.T
    slow = []
    for s, mine in zip(sims, correct):
        best = max((s[j] for j in range(6) if mine[j]), key=lambda v: np.inf if np.isnan(v) else v)
        slow.append(sum(1 for j in range(6) if not mine[j] and not s[j] < best))
    assert _best_correct_rank(queries, candidates, correct, chunk=7).tolist() == slow
    assert slow[5] == (~correct[5]).sum()


def test_zero_shot_known_answers():
    concepts = make_concepts()
    out = zero_shot(ConceptEncoder(concepts), concepts, ROOT, 1)
    assert (out["rank"] == 0).all() and out["labels"] == [f"thing{i}" for i in range(6)]
    bad = zero_shot(ConceptEncoder(concepts, sign=-1), concepts, ROOT, 1)
    assert (bad["rank"] == 5).all()
    with pytest.raises(ClearglassError, match="at least 2 distinct labels"):
        zero_shot(ConceptEncoder(concepts), concepts, ROOT, 4)


def test_retrieval_ties_are_not_hits():
    """ConceptEncoder gives all captions of a concept the same score: 2 ties per query, so strict rank 2."""
    concepts = make_concepts()
    out = retrieval(ConceptEncoder(concepts), concepts, ROOT)
    assert (out["i2t_rank"] == 2).all() and (out["t2i_rank"] == 2).all()


def slow_retrieval(encoder, concepts, captions="old_captions"):
    """Loops: an identical caption string is one candidate, correct for every image that carries it."""
    images = [im for c in concepts for im in c.test_images]
    img = encoder.embed_images([resolve_image_path(ROOT, im.image) for im in images]).numpy()
    texts = list(dict.fromkeys(t for im in images for t in getattr(im, captions)))
    txt = encoder.embed_texts(texts).numpy()
    has = [[t in getattr(im, captions) for t in texts] for im in images]
    i2t = []
    for i in range(len(images)):
        s = [float(img[i] @ txt[j]) for j in range(len(texts))]
        best = max(s[j] for j in range(len(texts)) if has[i][j])
        i2t.append(sum(1 for j in range(len(texts)) if not has[i][j] and s[j] >= best))
    t2i = []
    for j in range(len(texts)):
        s = [float(txt[j] @ img[i]) for i in range(len(images))]
        best = max(s[i] for i in range(len(images)) if has[i][j])
        t2i.append(sum(1 for i in range(len(images)) if not has[i][j] and s[i] >= best))
    return np.array(i2t), np.array(t2i)


def test_retrieval_matches_slow_oracle():
    concepts = make_concepts()
    for im in concepts[0].test_images:
        im.old_captions.append(f"another {im.image}")
    out = retrieval(RandomEncoder(), concepts, ROOT, chunk=4)
    i2t, t2i = slow_retrieval(RandomEncoder(), concepts)
    assert np.array_equal(out["i2t_rank"], i2t) and np.array_equal(out["t2i_rank"], t2i)


def test_repeated_captions_are_one_answer_in_both_directions():
    """Templated captions shared by several images: another image's identical caption is not a wrong candidate."""
    concepts = make_concepts()
    for c in concepts:
        for im in c.test_images:
            im.old_captions = [f"a photo of {c.concept}"]  # every image of a concept carries the same caption
    concepts[1].test_images[0].old_captions.append(f"a photo of {concepts[2].concept}")  # shared across concepts
    out = retrieval(ConceptEncoder(concepts), concepts, ROOT)
    i2t, t2i = slow_retrieval(ConceptEncoder(concepts), concepts)
    assert np.array_equal(out["i2t_rank"], i2t) and np.array_equal(out["t2i_rank"], t2i)
    assert (out["i2t_rank"] == 0).all()  # each image's concept caption is right; before, its twins tied with it
    assert len(out["texts"]) == len(set(out["texts"])) == len(concepts) == len(out["t2i_rank"])
    assert (out["t2i_rank"] == 0).all()
    shuffled = retrieval(RandomEncoder(), concepts, ROOT, chunk=3)
    assert [list(x) for x in slow_retrieval(RandomEncoder(), concepts)] == \
        [list(shuffled["i2t_rank"]), list(shuffled["t2i_rank"])]


def test_non_finite_embeddings_are_refused_not_scored():
    class NaNEncoder(RandomEncoder):
        name = "nan-model"

        def embed_images(self, paths):
            return torch.full((len(paths), 4), float("nan"))

    concepts = make_concepts()
    with pytest.raises(ClearglassError, match="'nan-model': .* image embeddings are not finite"):
        retrieval(NaNEncoder(), concepts, ROOT)
    with pytest.raises(ClearglassError, match="model 'runs/x.pt': .* image embeddings are not finite"):
        evaluate_model(NaNEncoder(), concepts, ROOT, EvalConfig(k=3, n_boot=2), model="runs/x.pt")  # the CLI's spec


# ---------------------------------------------------------------- hierarchical metrics


def slow_hierarchical(encoder, concepts, steps):
    chains = [(im.image, (im.level4, im.level3, im.level2, im.level1)) for c in concepts for im in c.test_images]
    texts = sorted({t for _, ch in chains for t in ch})
    emb = {t: encoder.embed_texts([t])[0].numpy() for t in texts}
    root = encoder.embed_texts([""])[0].numpy()
    radius = {t: float(np.linalg.norm(emb[t] - root)) for t in texts}
    taus = []
    for _, ch in chains:
        r = [radius[t] for t in ch]
        taus.append(sum(np.sign(r[j] - r[i]) for i, j in itertools.combinations(range(4), 2)) / 6)
    levels = np.linspace(min(radius.values()), max(radius.values()), steps)
    precision, recall = [], []
    for image in dict.fromkeys(i for i, _ in chains):
        v = encoder.embed_images([resolve_image_path(ROOT, image)])[0].numpy()
        preds = []
        for thr in levels:
            pool = [t for t in texts if radius[t] <= thr]
            best = max(pool, key=lambda t: (float(v @ emb[t]), -sorted(texts, key=radius.get).index(t)))
            if not preds or preds[-1] != best:
                preds.append(best)
        gts = [ch for i, ch in chains if i == image]
        flat = {t for ch in gts for t in ch}
        precision.append(len(set(preds) & flat) / len(set(preds)))
        recall.append(np.mean([any(ch[lv] in preds for ch in gts) for lv in range(4)]))
    return np.array(taus), np.array(precision), np.array(recall)


def test_hierarchical_matches_slow_oracle():
    concepts = make_concepts()
    out = hierarchical(RandomEncoder(), concepts, ROOT, steps=20)
    taus, precision, recall = slow_hierarchical(RandomEncoder(), concepts, 20)
    assert np.allclose(out["d_corr"], taus)
    assert np.allclose(out["precision"], precision) and np.allclose(out["recall"], recall)


def test_kendall_tau_known_values():
    r = np.array([[1, 2, 3, 4], [4, 3, 2, 1], [1, 3, 2, 4]], dtype=float)
    assert np.allclose(_kendall_tau_vs_order(r), [1, -1, 4 / 6])


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_bernoulli_interval():
    p, n = 0.3, 20000
    x = (np.random.default_rng(1).random(n) < p).astype(float)
    low, high = bootstrap(lambda idx: x[idx].mean(axis=1), n, n_boot=1000, seed=0)
    assert low < p < high
    expected = 2 * 1.96 * np.sqrt(p * (1 - p) / n)
    assert abs((high - low) - expected) / expected < 0.15
    assert (low, high) == bootstrap(lambda idx: x[idx].mean(axis=1), n, n_boot=1000, seed=0)


def test_class_recall_matches_loop():
    rng = np.random.default_rng(0)
    correct = (rng.random(50) < 0.5).astype(float)
    cls = rng.integers(0, 4, 50)
    idx = rng.integers(0, 50, (7, 50))
    fast = _class_recall(correct, cls, idx)
    for b in range(7):
        rec = [correct[idx[b]][cls[idx[b]] == c].mean() for c in range(4) if (cls[idx[b]] == c).any()]
        assert fast[b] == pytest.approx(np.mean(rec))


# ---------------------------------------------------------------- whole evaluation


def test_evaluate_model_values_and_single_encoding():
    concepts = make_concepts()
    enc = ConceptEncoder(concepts)
    config = EvalConfig(k=3, fields=["old_caption", "concept_level1", "concept_level2"], levels=[1, 2, 3],
                        template="a picture of {}", n_boot=50)
    res = evaluate_model(enc, concepts, ROOT, config, model="onehot")
    by = {(r["task"], r["subset"], r["metric"]): r for r in res["metrics"]}
    assert by[("recognition", "concept_level1", "i2t_R@1")]["value"] == 1.0
    assert by[("recognition", "concept_level2", "t2i_R@1")]["n"] == N_CONCEPTS * N_IMAGES
    assert by[("zero_shot", "level3", "top1")]["value"] == 1.0
    assert by[("zero_shot", "level2", "mean_class_recall")]["value"] == 1.0
    assert by[("retrieval", "old_captions", "i2t_R@1")]["value"] == 0.0
    assert by[("retrieval", "old_captions", "i2t_R@5")]["value"] == 1.0
    for r in res["metrics"]:
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert enc.calls["images"] == N_CONCEPTS * N_IMAGES  # each unique image once, across all tasks
    assert enc.calls["texts"] == res["n_texts_embedded"]


def test_evaluate_model_bad_input():
    concepts = make_concepts()
    with pytest.raises(ClearglassError, match="unknown field"):
        evaluate_model(RandomEncoder(), concepts, ROOT, EvalConfig(fields=["caption"]))
    with pytest.raises(ClearglassError, match="without any images"):
        evaluate_model(RandomEncoder(), concepts + [ConceptRecord(concept="empty")], ROOT, EvalConfig())
    with pytest.raises(ClearglassError, match="k=5 needs at least 5"):
        evaluate_model(RandomEncoder(), make_concepts(4), ROOT, EvalConfig(k=5, fields=["old_caption"]))
    for bad, message in [(dict(seed=-1), "seed = -1: expected 0 <= seed < 2**63"),
                         (dict(seed=2**63), "seed = 9223372036854775808: expected"),
                         (dict(ci_level=1.0), "ci_level = 1.0: expected 0 < ci_level < 1"),
                         (dict(retrieval_ks=[1, 0]), "retrieval_ks = [1, 0]: expected each k >= 1"),
                         (dict(hierarchy_steps=1), "hierarchy_steps = 1: expected hierarchy_steps >= 2")]:
        with pytest.raises(ClearglassError) as e:
            EvalConfig(**bad)
        assert str(e.value).startswith(message) and "EvalConfig(" not in str(e.value)
    for template in ("a {x} photo", "a {} of {}", "a {0} {1}", "{.__class__.__doc__}", "{!r}", "{:>9}", "a { b",
                     "no field"):
        with pytest.raises(ClearglassError) as e:
            EvalConfig(template=template)
        assert str(e.value) == f"template {template!r}: expected one {{}} for the label and no other {{...}} field " \
            "(write {{ and }} for braces)"
    assert EvalConfig(template="{{a}} {}").template == "{{a}} {}"


# ---------------------------------------------------------------- ModelEncoder


class TinyBundle:
    """A stand-in ModelBundle: mean colour -> 3-d image embedding, character counts -> text embedding."""

    class Model(torch.nn.Module):
        def encode_image(self, x, normalize=False):
            return x.mean(dim=(2, 3))

        def encode_text(self, tokens, normalize=False):
            return tokens.float()

    def __init__(self):
        self.model = self.Model()
        self.tokenizer = lambda texts: torch.tensor([[t.count("a") + 1, t.count("b"), len(t)] for t in texts])
        self.preprocess_val = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)
        self.name = "tiny"


def test_model_encoder_once_batched_cached_and_bad_files(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (4, 4), colour).save(tmp_path / f"{i}.png")
    paths = [tmp_path / "0.png", tmp_path / "1.png", tmp_path / "0.png", tmp_path / "2.png"]
    enc = ModelEncoder(TinyBundle(), batch_size=2, cache_dir=tmp_path / "cache")
    emb = enc.embed_images(paths)
    assert emb.shape == (4, 3) and enc.n_images_encoded == 3
    assert torch.allclose(emb[0], torch.tensor([1.0, 0, 0])) and torch.equal(emb[0], emb[2])
    assert torch.allclose(emb.norm(dim=1), torch.ones(4))
    again = ModelEncoder(TinyBundle(), batch_size=2, cache_dir=tmp_path / "cache")
    assert torch.equal(again.embed_images(paths), emb) and again.n_images_encoded == 0
    texts = ["ab", "b", "ab"]
    assert enc.embed_texts(texts).shape == (3, 3) and enc.n_texts_encoded == 2
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ClearglassError, match="bad.png"):
        enc.embed_images([tmp_path / "bad.png"])
    with pytest.raises(ClearglassError, match="missing.png"):
        enc.embed_images([tmp_path / "missing.png"])


class WeightedBundle(TinyBundle):
    """TinyBundle whose image embedding is mixed by a weight matrix, so the weights hash changes with it."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = torch.nn.Parameter(torch.eye(3))

        def encode_image(self, x, normalize=False):
            return x.mean(dim=(2, 3)) @ self.mix

        def encode_text(self, tokens, normalize=False):
            return tokens.float()


def test_an_embedding_cache_entry_that_is_not_what_its_name_promises_is_refused_naming_why(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "0.png")
    ModelEncoder(TinyBundle(), cache_dir=tmp_path / "cache").embed_images([tmp_path / "0.png"])
    [entry] = (tmp_path / "cache").glob("images-*.pt")
    good = torch.load(entry, weights_only=True)
    for content, why in [
            (torch.zeros(1, 3), "does not hold a cache entry"),  # a bare tensor, as format 1 wrote
            ({**good, "embeddings": torch.zeros(5, 2)}, "holds embeddings of shape (5, 2); expected (1, D) float32"),
            ({**good, "key": "0" * 64}, "holds the entry of another model or data"),
            ({**good, "embeddings": good["embeddings"] * -1}, "holds embeddings changed since they were written")]:
        torch.save(content, entry)
        with pytest.raises(ClearglassError) as e:
            ModelEncoder(TinyBundle(), cache_dir=tmp_path / "cache").embed_images([tmp_path / "0.png"])
        assert str(e.value).startswith(f"{entry}: embedding cache file {why}")
        assert str(e.value).endswith("; delete it and the run recomputes it")


def test_model_encoder_cache_misses_on_changed_weights_or_image(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0)]):
        Image.new("RGB", (4, 4), colour).save(tmp_path / f"{i}.png")
    paths = [tmp_path / "0.png", tmp_path / "1.png"]
    first = ModelEncoder(WeightedBundle(), cache_dir=tmp_path / "cache").embed_images(paths)
    changed = WeightedBundle()
    with torch.no_grad():
        changed.model.mix[0] = torch.tensor([0.0, 1.0, 0.0])  # red now embeds as green
    enc = ModelEncoder(changed, cache_dir=tmp_path / "cache")
    emb = enc.embed_images(paths)
    assert enc.n_images_encoded == 2 and torch.allclose(emb[0], emb[1]) and not torch.allclose(emb, first)
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "1.png")  # same path, new content (mtime)
    enc = ModelEncoder(WeightedBundle(), cache_dir=tmp_path / "cache")
    emb = enc.embed_images(paths)
    assert enc.n_images_encoded == 2 and torch.allclose(emb[1], torch.tensor([0.0, 0.0, 1.0]))


def test_auto_fields_and_levels_skip_with_reasons():
    concepts = make_concepts()
    res = evaluate_model(ConceptEncoder(concepts), concepts, ROOT,
                         EvalConfig(k=3, n_boot=20, tasks=["recognition", "zero_shot"]))
    assert res["config"]["fields"] == ["new_caption", "old_caption", "concept_level1", "concept_level2"]
    assert res["config"]["levels"] == [1, 2, 3]
    assert set(res["skipped"]) == {"recognition/concept_level3", "recognition/concept_level4", "zero_shot/level4"}


# ---------------------------------------------------------------- the task registry


def test_the_task_registry_names_unknown_tasks_and_metrics_with_the_closest():
    from clearglass.evaluate import TASKS, check_metric, config_for
    from clearglass.results import MetricKey

    assert {"recognition", "zero_shot", "retrieval", "hierarchical"} <= set(TASKS)
    with pytest.raises(ClearglassError, match="unknown task 'recogniton': did you mean 'recognition'"):
        EvalConfig(tasks=["recogniton"])
    for text, message in [("retreival/old_captions/i2t_R@1", "unknown task 'retreival'; did you mean 'retrieval'"),
                          ("zero_shot/levl1/top1", "no subset 'levl1'; did you mean 'level1'"),
                          ("retrieval/old_captions/i2t_R@3", "no 'i2t_R@3'; did you mean 'i2t_R@"),
                          ("hierarchical/hierarcaps/dcorr", "did you mean 'd_corr'")]:
        with pytest.raises(ClearglassError, match=message):
            check_metric(MetricKey.parse(text))
    keys = [MetricKey.parse(m) for m in ("recognition/concept_level2/i2t_R@1", "zero_shot/level3/top1",
                                         "retrieval/new_captions/t2i_R@5")]
    config = config_for(keys, EvalConfig(n_boot=7))
    assert (config.tasks, config.fields, config.levels, config.retrieval_captions, config.n_boot) == \
        (["recognition", "zero_shot", "retrieval"], ["concept_level2"], [3], "new_captions", 7)


def test_every_task_runs_once_and_its_rows_are_its_registered_metrics():
    from clearglass.evaluate import TASKS

    concepts = make_concepts()
    config = EvalConfig(k=3, fields=["concept_level1"], levels=[1], n_boot=20,
                        tasks=["recognition", "zero_shot", "retrieval"])
    enc = ConceptEncoder(concepts)
    res = evaluate_model(enc, concepts, ROOT, config)
    for task in config.tasks:
        rows = [r for r in res["metrics"] if r["task"] == task]
        assert [r["metric"] for r in rows] == [name for name, _ in TASKS[task].metrics(config)]
    assert enc.calls["images"] == res["n_images_embedded"] == N_CONCEPTS * N_IMAGES  # each image once in all
    assert enc.calls["texts"] == res["n_texts_embedded"]


def test_the_base_to_novel_harmonic_mean_is_a_registered_task():
    """Concepts with training images are base, the others novel; the row is the harmonic mean of the two hit rates,
    its interval and paired differences come from the same per-item outcomes as every other row."""
    from clearglass.base_to_novel import harmonic_mean
    from clearglass.report import compare
    from clearglass.results import MetricKey, Results

    concepts = make_concepts()
    for c in concepts[:4]:  # base concepts: their test images stand in as training images
        c.train_images = list(c.test_images)
    config = EvalConfig(k=3, fields=["concept_level1"], tasks=["recognition", "harmonic_mean"], n_boot=100)
    results = {name: evaluate_model(enc, concepts, ROOT, config, model=name)
               for name, enc in (("onehot", ConceptEncoder(concepts)), ("random", RandomEncoder()))}
    for res in results.values():
        table = Results.of(res)
        ranks = np.asarray(res["per_item"]["recognition/concept_level1"]["arrays"]["i2t_rank"])
        novel = np.repeat([False] * 4 + [True] * 2, N_IMAGES)  # the items in concept order, N_IMAGES each
        expected = float(harmonic_mean(np.mean(ranks[~novel] < 1), np.mean(ranks[novel] < 1)))
        key = MetricKey.parse("harmonic_mean/concept_level1/i2t_R@1")
        assert table.value(key) == pytest.approx(expected)
        low, high = table.interval(key)
        assert low <= expected <= high
    assert Results.of(results["onehot"]).value(key) == 1.0
    d = Results.of(compare(results)).difference(key, "random", "onehot")
    assert d["value"] == pytest.approx(Results.of(results["random"]).value(key) - 1.0)
    with pytest.raises(ClearglassError, match="needs test items of base concepts"):
        evaluate_model(RandomEncoder(), make_concepts(), ROOT, config)
