"""The picture gallery of report.html: test pictures scored by the very recognition task of the report's table.

For each shown picture: the K candidates the table's recognition task gave it (its true concept and K-1 hard
negatives, rebuilt by ``make_recognition_items`` from the results' own k, seed and template and checked against
their items hash), each model's pick among them, and whether the table counted a hit (the results' per-item
outcomes, merged over seeds as the table merges them). The scoreboard quotes the table's figure of every model,
split and level with its count of hits, and counts the same hits over the pictures the filters show.

The section is HTML for :func:`clearglass.page.write_page` (thumbnails are PNG data URIs), with its ``STYLE`` and
``SCRIPT``.
"""

from __future__ import annotations

import base64
import io
import os
import random
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from clearglass.errors import ClearglassError
from clearglass.evaluate import Encoder, Item, items_hash, make_recognition_items, metric_stat, rank_labels
from clearglass.io import load_image
from clearglass.magic.schema import ConceptRecord, resolve_image_path
from clearglass.report import fmt_pct
from clearglass.results import MetricKey, Outcomes, Results

LEVELS = (1, 2)  # the concept levels a gallery shows
THUMBNAIL = 112  # longest side of a thumbnail, pixels
METRIC = "i2t_R@1"  # the table's recognition measure: the picture picks one of K concept names
OUTCOMES = {"all-right": "every model right", "mixed": "models disagree", "all-wrong": "every model wrong"}


@dataclass(frozen=True)
class Trials:
    """One split's recognition items per level, exactly as ``evaluate_model`` made them for the table."""

    split: str
    k: int
    template: str
    items: dict[int, list[Item]]  # level -> (n pictures,) items; candidate 0 is the truth

    def labels(self, level: int, position: int) -> list[str]:
        """The K candidate concept names of one picture at ``level``, the template taken off; the truth first."""
        prefix, _, suffix = self.template.format("\0").partition("\0")  # as formatted: {{ is one brace
        return [t[len(prefix):len(t) - len(suffix)] for t in self.items[level][position].texts]


def split_trials(split: str, concepts: list[ConceptRecord], config: dict) -> Trials:
    """The recognition items at the gallery's levels that a results ``config`` scored (its ``fields``)."""
    fields = config["fields"] if "recognition" in config["tasks"] else []
    items = {lv: make_recognition_items(concepts, f"concept_level{lv}", config["k"], config["seed"], config["template"])
             for lv in LEVELS if f"concept_level{lv}" in fields}
    return Trials(split, config["k"], config["template"], items)


@dataclass(frozen=True)
class Hits:
    """One model's recognition outcomes at one split and level, as the table counted them."""

    counts: np.ndarray  # (n pictures,) hits, summed over the model's seeds
    seeds: int
    value: float  # the table's figure: the metric over every picture of the split

    def total(self) -> str:
        """The hits over every picture and seed, as "hits/trials"."""
        return f"{int(self.counts.sum())}/{len(self.counts) * self.seeds}"


def _per_item(outcomes: Outcomes) -> np.ndarray:
    """Each item's own value of the metric's statistic (a resample of that one item): for one seed's hit metric, 1
    or 0; for the merged seeds' mean of hits, the fraction of seeds that hit."""
    return metric_stat(outcomes.spec, outcomes.arrays)(np.arange(outcomes.n)[:, None])


def table_hits(trials: Trials, results: dict) -> dict[int, Hits]:
    """Per level of ``trials``: one model's hits from its results' per-item outcomes, refused when they were scored
    on other items or do not add up to the results' own figure."""
    out = {}
    for level, items in trials.items.items():
        group = f"recognition/concept_level{level}"
        where = f"gallery, split {trials.split!r}, model {results['model']!r}, {group}"
        key, table = MetricKey("recognition", f"concept_level{level}", METRIC), Results.of(results)
        try:
            outcomes, value = table.outcomes(key), table.value(key)
        except (ClearglassError, KeyError):
            raise ClearglassError(f"{where}: the results have no {METRIC} row with per-item outcomes") from None
        if outcomes.items_hash != items_hash(items):
            raise ClearglassError(f"{where}: scored on other items (items hash {outcomes.items_hash}, the test "
                                  f"set's {items_hash(items)}): other data, k, seed or template")
        seeds = int(results.get("seeds", 1))
        counts = np.rint(_per_item(outcomes) * seeds).astype(int)
        if len(counts) != len(items) or abs(counts.sum() / (len(items) * seeds) - value) > 1e-9:
            raise ClearglassError(f"{where}: {len(counts)} per-item outcomes that do not add up to the results' "
                                  f"{METRIC} {value} over {len(items)} items")
        out[level] = Hits(counts, seeds, value)
    return out


@dataclass(frozen=True)
class GalleryItem:
    """One shown picture: its split, concept and image id, and its position in each level's recognition items."""

    split: str
    concept: str
    image: str
    positions: dict[int, int]  # level -> position in the split's items and per-item outcomes


def _outcome(hits_by_model: dict[str, dict[int, Hits]], level: int, position: int) -> str:
    """all-right (every model right: a hit in most of its seeds), all-wrong (none right) or mixed."""
    right = [2 * h[level].counts[position] > h[level].seeds for h in hits_by_model.values()]
    return "all-right" if all(right) else "all-wrong" if not any(right) else "mixed"


def _spread(pictures: list[GalleryItem], rng: random.Random) -> list[GalleryItem]:
    """The pictures shuffled, then dealt round-robin over their concepts (in a shuffled order)."""
    by_concept: dict[str, list[GalleryItem]] = {}
    for it in rng.sample(pictures, len(pictures)):
        by_concept.setdefault(it.concept, []).append(it)
    return _deal(list(by_concept.values()), len(pictures))


def _deal(piles: list[list[GalleryItem]], n: int) -> list[GalleryItem]:
    """Up to ``n`` items taken one from each pile in turn."""
    piles = [list(p) for p in piles]
    out: list[GalleryItem] = []
    while len(out) < n and any(piles):
        for pile in piles:
            if pile and len(out) < n:
                out.append(pile.pop(0))
    return out


def sample_gallery(trials: list[Trials], per_split: int, seed: int = 0,
                   hits: dict[str, dict[str, dict[int, Hits]]] | None = None) -> list[GalleryItem]:
    """A seeded sample of up to ``per_split`` pictures of each split, spread over its concepts; with ``hits``
    (split -> model -> level -> ``Hits``), dealt evenly over the first level's outcomes too (every model right,
    models disagree, every model wrong; a model is right with a hit in most of its seeds), so right and wrong cases
    both show."""
    out: list[GalleryItem] = []
    for t in trials:
        if not t.items:
            continue
        first = min(t.items)
        where = {lv: {(it.concepts[0], it.images[0]): i for i, it in reversed(list(enumerate(items)))}
                 for lv, items in t.items.items()}
        pictures = [GalleryItem(t.split, it.concepts[0], it.images[0],
                                {lv: w[key] for lv, w in where.items() if (key := (it.concepts[0], it.images[0])) in w})
                    for it in t.items[first]]
        groups = {o: [p for p in pictures if _outcome(hits[t.split], first, p.positions[first]) == o]
                  for o in OUTCOMES} if hits else {"any": pictures}
        rng = random.Random(f"{seed}:{t.split}")
        out += _deal([_spread(group, rng) for group in groups.values()], per_split)
    return out


def gallery_picks(encoder: Encoder, items: list[GalleryItem], trials: dict[str, Trials],
                  image_root: str | os.PathLike) -> list[dict[int, dict]]:
    """Per item and level: the encoder's cosine score of each of the K candidates and its ``pick`` (the highest).
    Each image and each candidate text is encoded once."""
    paths = list(dict.fromkeys(resolve_image_path(image_root, it.image) for it in items))
    texts = list(dict.fromkeys(t for it in items for lv, i in it.positions.items()
                               for t in trials[it.split].items[lv][i].texts))
    scores = rank_labels(encoder, paths, texts)  # (pictures, texts); the texts carry their template already
    p_idx, t_idx = {p: i for i, p in enumerate(paths)}, {t: i for i, t in enumerate(texts)}
    out = []
    for it in items:
        row = scores[p_idx[resolve_image_path(image_root, it.image)]]
        picks = {}
        for lv, i in it.positions.items():
            s = row[[t_idx[t] for t in trials[it.split].items[lv][i].texts]]  # (K,) truth first
            picks[lv] = {"scores": [float(x) for x in s], "pick": int(np.argmax(s))}
        out.append(picks)
    return out


def _thumbnail(path: Path, what: str) -> str:
    """The image at ``path`` as a PNG data URI, its longest side ``THUMBNAIL`` pixels at most."""
    image = load_image(path, what)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _name(model: str) -> str:
    """A model name for HTML, breakable after its underscores."""
    return escape(model).replace("_", "_<wbr>")


def _verdict(count: int, seeds: int) -> tuple[str, str]:
    """The cell class and mark of ``count`` hits in ``seeds``."""
    return ("right", "✓") if count == seeds else ("wrong", "✗") if count == 0 else ("part", "½")


def _pick_cell(pick: dict, labels: list[str], hit: Hits, position: int, key: str) -> str:
    """A model's pick among one level's candidates, marked by the table's hit (in how many seeds, when several)."""
    count = int(hit.counts[position])
    cls, mark = _verdict(count, hit.seeds)
    chosen = labels[pick["pick"]]
    seeds = f' <span class="seeds">{count}/{hit.seeds} seeds</span>' if hit.seeds > 1 else ""
    title = "; ".join(f"{x}: {s:.3f}" for x, s in zip(labels, pick["scores"]))
    return (f'<td class="{cls}" data-key="{key}" data-hits="{count}" title="{escape(title)}">'
            f'<span class="mark">{mark}</span> <span class="{"true" if pick["pick"] == 0 else ""}">'
            f"{escape(chosen)}</span>{seeds}</td>")


def _card(it: GalleryItem, uri: str, kind: tuple[int, str], trials: Trials, picks: dict[str, dict[int, dict]],
          hits: dict[str, dict[int, Hits]], levels: list[int]) -> str:
    """One picture: thumbnail, kind badge, truth, each level's candidates, and per model its pick per level."""
    truth = {lv: trials.labels(lv, it.positions[lv]) for lv in levels if lv in it.positions}
    candidates = "".join(f'<div class="cands"><small>level {lv} of</small> ' + " · ".join(
        f"<b>{escape(x)}</b>" if j == 0 else escape(x) for j, x in enumerate(labels)) + "</div>"
                         for lv, labels in truth.items())
    rows = "".join(f"<tr><th>{_name(m)}</th>" + "".join(
        _pick_cell(picks[m][lv], truth[lv], hits[m][lv], it.positions[lv], f"{n}-{it.split}-{lv}") if lv in truth
        else "<td>-</td>" for lv in levels) + "</tr>" for n, m in enumerate(picks))
    first = min(truth)
    outcome = _outcome(hits, first, it.positions[first])
    data = " ".join(f'data-l{lv}="{escape(labels[0])}"' for lv, labels in truth.items())
    head = "".join(f"<th>level {lv}</th>" for lv in levels)
    return (f'<div class="card" data-split="{escape(it.split)}" {data} data-outcome="{outcome}">'
            f'<div class="top"><img src="{uri}" alt="{escape(it.image)}" width="{THUMBNAIL}">'
            f'<div class="truth"><span class="badge kind{kind[0]}">{escape(kind[1])}</span>'
            + "".join(f"<div><small>level {lv}</small> <b>{escape(labels[0])}</b></div>"
                      for lv, labels in truth.items())
            + f'<div class="id">{escape(it.image)}</div></div></div>{candidates}'
            f'<table class="preds"><thead><tr><th>pick of</th>{head}</tr></thead><tbody>{rows}</tbody></table></div>')


def _scoreboard(models: list[str], splits: dict[str, str], hits: dict[str, dict[str, dict[int, Hits]]],
                levels: list[int]) -> str:
    """Per model, split and level: the table's figure with its hits over all pictures, and the hits on the shown
    pictures (the filter's script fills these in)."""
    top = "".join(f'<th colspan="{len(levels)}">{escape(label)}</th>' for label in splits.values())
    sub = "".join(f"<th>level {lv}</th>" for _ in splits for lv in levels)
    rows = "".join(f"<tr><th>{_name(m)}</th>" + "".join(
        f'<td data-model="{escape(m)}" data-split="{escape(s)}" data-level="{lv}" data-value="{fmt_pct(h.value)}">'
        f'<b>{fmt_pct(h.value)}%</b> <span class="all">{h.total()}</span><br>'
        f'<span class="shown" data-count="{n}-{escape(s)}-{lv}" data-seeds="{h.seeds}"></span></td>'
        for s in splits for lv in levels for h in [hits[s][m][lv]]) + "</tr>" for n, m in enumerate(models))
    return (f'<table class="scoreboard"><thead><tr><th rowspan="2">model</th>{top}</tr><tr>{sub}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _filters(items: list[GalleryItem], trials: dict[str, Trials], splits: dict[str, str]) -> str:
    """Selects by kind (split), by concept (per kind at level 1, then level 2) and by outcome."""
    kinds = "".join(f'<option value="{escape(s)}">{escape(label)}</option>' for s, label in splits.items())
    truths = [(it.split, lv, trials[it.split].labels(lv, i)[0]) for it in items for lv, i in it.positions.items()]
    groups = [(f"{label}: level 1", 1, sorted({x for s, lv, x in truths if s == split and lv == 1}))
              for split, label in splits.items()]
    groups.append(("level 2", 2, sorted({x for _, lv, x in truths if lv == 2})))
    concepts = "".join(f'<optgroup label="{escape(name)}">' + "".join(
        f'<option value="{lv}:{escape(x)}">{escape(x)}</option>' for x in values) + "</optgroup>"
        for name, lv, values in groups if values)
    outcomes = "".join(f'<option value="{o}">{label}</option>' for o, label in OUTCOMES.items())
    return (f'<label>kind <select id="kind"><option value="">every kind</option>{kinds}</select></label> '
            f'<label>concept <select id="concept"><option value="">every concept</option>{concepts}</select></label> '
            f'<label>outcome <select id="outcome"><option value="">any outcome</option>{outcomes}</select></label> '
            '<span id="shown"></span>')


def _legend(k: int, seeds: int, kinds: dict[str, tuple[int, str]]) -> str:
    """What the gallery shows and how it matches the table."""
    several = (f" (its first seed's model; the mark counts the table's hits over all {seeds} seeds, merged as in the "
               "table)") if seeds > 1 else ""
    badges = "; ".join(f'<span class="badge kind{n}">{escape(label)}</span>' for n, label in kinds.values())
    return ("<p>Each picture is scored by the recognition task of the tables above (image→text R@1): its true "
            f"concept (<b>bold</b>) among the same {k} candidates the table gave it. Per model the card shows its pick"
            f"{several}: ✓ a hit, ✗ a miss, ½ a hit in some seeds only; hover a pick for every candidate's score. "
            "The scoreboard quotes the table's figure of every model, kind and level with its hits over all the "
            "kind's pictures (hits/trials), and under it the hits on the pictures shown. The outcome filter calls a "
            f"model right with a hit in most of its seeds. Kinds: {badges}.</p>")


def gallery_html(items: list[GalleryItem], picks_by_model: dict[str, list[dict[int, dict]]],
                 trials: dict[str, Trials], hits: dict[str, dict[str, dict[int, Hits]]], splits: dict[str, str],
                 image_root: str | os.PathLike) -> str:
    """The gallery section: what it shows, the scoreboard, filters by kind, concept and outcome (they stay on
    screen) and a card per item. ``splits`` names each split's kind (its badge); ``hits`` is split -> model ->
    level -> ``Hits`` (``table_hits``); ``picks_by_model`` holds ``gallery_picks`` per model, in the scoreboard's
    order."""
    if not picks_by_model:
        raise ClearglassError("gallery: no model's picks to show")
    for model, picks in picks_by_model.items():
        if len(picks) != len(items) or any(set(p) != set(it.positions) for p, it in zip(picks, items)):
            raise ClearglassError(f"gallery: the picks of model {model!r} are not for the {len(items)} sampled "
                                  "items in their order")
        missing = [s for s in splits if model not in hits.get(s, {})]
        if missing:
            raise ClearglassError(f"gallery: model {model!r} has no table hits for split(s) {missing}")
    levels = sorted(set.intersection(*(set(trials[s].items) for s in splits)))
    kinds = {s: (n, label) for n, (s, label) in enumerate(splits.items())}
    cards = [_card(it, _thumbnail(resolve_image_path(image_root, it.image),
                                  f"gallery, concept {it.concept!r}, image {it.image!r}"),
                   kinds[it.split], trials[it.split], {m: p[i] for m, p in picks_by_model.items()},
                   {m: hits[it.split][m] for m in picks_by_model}, levels) for i, it in enumerate(items)]
    models = list(picks_by_model)
    seeds = max(hits[s][m][lv].seeds for s in splits for m in models for lv in levels)
    legend = _legend(trials[next(iter(splits))].k, seeds, kinds)
    return "\n".join([f'<section id="gallery"><h2>Gallery: {len(items)} test pictures</h2>', legend,
                      _scoreboard(models, splits, hits, levels),
                      f'<div class="filters">{_filters(items, trials, splits)}</div>',
                      '<div class="grid">', *cards, "</div></section>"])


STYLE = """
.filters{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:1}
.filters select{font-size:14px;margin-right:12px;max-width:300px}
table.scoreboard{margin:6px 0;font-size:12px}
table.scoreboard td{white-space:nowrap}.scoreboard .all,.scoreboard .shown{color:#666}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:10px;margin-top:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;min-width:0}
.card[hidden]{display:none}
.top{display:flex;gap:10px;align-items:flex-start}
.top img{border:1px solid #eee;background:#fff;flex:none}
.truth b{font-size:15px}.truth small{color:#777;display:inline-block;width:48px}
.id{color:#999;font-size:11px;word-break:break-all}
.cands{font-size:12px;color:#555;margin-top:4px}.cands small{color:#777}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;color:#fff;margin-bottom:4px}
.badge.kind0{background:#4f7fd0}.badge.kind1{background:#8a4fd0}.badge.kind2{background:#c0701a}
.badge.kind3{background:#2f8f6f}
table.preds{border-collapse:collapse;width:100%;margin-top:6px;font-size:13px;table-layout:fixed}
table.preds th{text-align:left;font-weight:600;padding:2px 4px;vertical-align:top;border:0;background:none}
table.preds th:first-child{width:34%}
table.preds td{padding:2px 4px;vertical-align:top;border:0;border-radius:4px}
td.right{background:#e3f6e3}td.wrong{background:#fbe6e6}td.part{background:#fbf0d0}
.mark{font-weight:bold}td.right .mark{color:#1a7f1a}td.wrong .mark{color:#b02020}td.part .mark{color:#9a6a00}
span.true{color:#106010;font-weight:bold}.seeds{color:#777;font-size:11px}
"""

SCRIPT = """
(function () {
  var kind = document.getElementById('kind'), concept = document.getElementById('concept');
  var outcome = document.getElementById('outcome'), shown = document.getElementById('shown');
  var cards = Array.prototype.slice.call(document.querySelectorAll('.card'));
  var counts = Array.prototype.slice.call(document.querySelectorAll('[data-count]'));
  function apply() {
    var want = concept.value, n = 0;
    cards.forEach(function (card) {
      var ok = (!kind.value || card.getAttribute('data-split') === kind.value) &&
               (!want || card.getAttribute('data-l' + want.charAt(0)) === want.slice(2)) &&
               (!outcome.value || card.getAttribute('data-outcome') === outcome.value);
      card.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = 'showing ' + n + ' of ' + cards.length + ' pictures';
    counts.forEach(function (cell) {
      var key = cell.getAttribute('data-count'), hits = 0, trials = 0;
      var seeds = parseInt(cell.getAttribute('data-seeds'), 10);
      document.querySelectorAll('.card:not([hidden]) td[data-key="' + key + '"]').forEach(function (td) {
        hits += parseInt(td.getAttribute('data-hits'), 10);
        trials += seeds;
      });
      cell.textContent = 'shown: ' + hits + '/' + trials;
    });
  }
  [kind, concept, outcome].forEach(function (select) { select.addEventListener('change', apply); });
  apply();
})();
"""
