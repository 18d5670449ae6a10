"""A picture gallery of test images beside the report: each image, its true concepts and what each model picked.

``report.html`` is one self-contained file (thumbnails embedded as PNG data URIs, inline CSS and a few lines of
inline JS, a Content-Security-Policy that forbids every fetch), so it opens anywhere without a network.
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
from clearglass.evaluate import Encoder, rank_labels, strict_rank
from clearglass.io import load_image, write_text_atomic
from clearglass.magic.schema import ConceptRecord, resolve_image_path

LEVELS = (1, 2)  # the concept levels a gallery shows
THUMBNAIL = 112  # longest side of a thumbnail, pixels


@dataclass(frozen=True)
class GalleryItem:
    """One sampled test image: the subset and concept it came from, whether that concept is held out, its truth."""

    subset: str
    concept: str
    held_out: bool
    image: str  # the id as stored in ImageRecord.image
    level1: str | None
    level2: str | None

    def truth(self, level: int) -> str | None:
        """The true concept at ``level`` (1 or 2)."""
        return self.level1 if level == 1 else self.level2


def sample_gallery_images(concepts_by_subset: dict[str, list[ConceptRecord]], per_held_out_concept: int = 8,
                          seen: int = 16, seed: int = 0, max_held_out: int = 240) -> list[GalleryItem]:
    """A seeded sample of test images: up to ``per_held_out_concept`` of every held-out concept (no training
    images), at most ``max_held_out`` of them in all (a seeded subset, in order, when a test-only file such as
    HierarCaps makes every concept held out), then ``seen`` images of seen concepts taken round-robin over the
    concepts in a seeded order."""
    held, pools = [], []
    for subset, concepts in concepts_by_subset.items():
        for c in concepts:
            items = [GalleryItem(subset, c.concept, not c.train_images, im.image, im.level1, im.level2)
                     for im in c.test_images]
            random.Random(f"{seed}:{subset}:{c.concept}").shuffle(items)
            if c.train_images:
                pools.append(items)
            else:
                held += items[:per_held_out_concept]
    if len(held) > max_held_out:
        keep = set(random.Random(f"{seed}:held").sample(range(len(held)), max_held_out))
        held = [it for i, it in enumerate(held) if i in keep]
    random.Random(f"{seed}:seen").shuffle(pools)
    picked: list[GalleryItem] = []
    while len(picked) < seen and any(pools):
        for pool in pools:
            if pool and len(picked) < seen:
                picked.append(pool.pop(0))
    return held + picked


def gallery_predictions(encoder: Encoder, items: list[GalleryItem], image_root: str | os.PathLike,
                        labels_by_level: dict[int, list[str]], template: str = "{}", k: int = 3) -> list[dict]:
    """Per item and level (``"level1"``, ``"level2"``): the top-k labels with their scores and the 1-based strict rank
    of the true label (None when the item has no truth among the labels). One ``rank_labels`` call over every level's
    labels, so each image and each label is encoded once."""
    unknown = [lv for lv in labels_by_level if lv not in LEVELS]
    if unknown:
        raise ClearglassError(f"gallery levels {unknown}: expected some of {list(LEVELS)}")
    levels = list(labels_by_level)
    paths = [resolve_image_path(image_root, it.image) for it in items]
    all_labels = [x for lv in levels for x in labels_by_level[lv]]
    scores = rank_labels(encoder, paths, all_labels, template)  # (n items, sum of L labels)
    out: list[dict] = [{"image": it.image} for it in items]
    start = 0
    for lv in levels:
        labels = labels_by_level[lv]
        block = scores[:, start:start + len(labels)]  # (n items, L labels of this level)
        start += len(labels)
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        truths = [labels.index(t) if (t := it.truth(lv)) in labels else -1 for it in items]
        ranks = strict_rank(block, np.maximum(np.array(truths, dtype=int), 0)) + 1  # 1-based
        for i, it in enumerate(items):
            rank = int(ranks[i]) if truths[i] >= 0 else None
            out[i][f"level{lv}"] = {"top": [{"label": labels[j], "score": float(block[i, j])} for j in order[i]],
                                    "true_rank": rank}
    return out


def _thumbnail(path: Path, what: str) -> str:
    """The image at ``path`` as a PNG data URI, its longest side ``THUMBNAIL`` pixels at most."""
    image = load_image(path, what)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _summary_html(summary: list[dict]) -> str:
    """The report's headline sections (``report.headline_sections``): heading, table with coloured verdicts, verdict."""
    parts = []
    for section in summary:
        header, rows = section["table"]
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(
            f'<td class="{"v-" + c.split()[0] if c in ("better", "worse", "no clear difference") else ""}">'
            f"{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts += [f"<h2>{escape(section['heading'])}</h2>"] if section.get("heading") else []
        parts.append(f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
        parts += [f'<p class="note">{escape(section["verdict"])}</p>'] if section.get("verdict") else []
    return "\n".join(parts)


def _prediction_cell(pred: dict, truth: str | None, key: str) -> str:
    """A model's top-k at one level: the true label marked; the cell is green when the top-1 is right."""
    right = pred["true_rank"] == 1
    chips = "".join(f'<li class="{"true" if x["label"] == truth else ""}" title="score {x["score"]:.3f}">'
                    f'{escape(x["label"])}</li>' for x in pred["top"])
    missing = (f'<span class="rank">true #{pred["true_rank"]}</span>'
               if pred["true_rank"] is not None and pred["true_rank"] > len(pred["top"]) else "")
    mark = "✓" if right else "✗"
    return (f'<td class="{"right" if right else "wrong"}" data-key="{key}"><span class="mark">{mark}</span>'
            f"<ol>{chips}</ol>{missing}</td>")


def _outcome(rights: list[bool]) -> str:
    return "all-right" if all(rights) else "all-wrong" if not any(rights) else "mixed"


def _card(item: GalleryItem, uri: str, predictions_by_model: dict[str, dict], levels: list[int]) -> str:
    rows = "".join(f"<tr><th>{escape(model)}</th>"
                   + "".join(_prediction_cell(pred[f"level{lv}"], item.truth(lv), f"{m}-{lv}") for lv in levels)
                   + "</tr>" for m, (model, pred) in enumerate(predictions_by_model.items()))
    first = levels[0]
    outcome = _outcome([p[f"level{first}"]["true_rank"] == 1 for p in predictions_by_model.values()])
    kind = "held-out" if item.held_out else "seen"
    head = "".join(f"<th>level {lv}</th>" for lv in levels)
    return (f'<div class="card" data-l1="{escape(item.level1 or "")}" data-l2="{escape(item.level2 or "")}" '
            f'data-outcome="{outcome}">'
            f'<div class="top"><img src="{uri}" alt="{escape(item.image)}" width="{THUMBNAIL}">'
            f'<div class="truth"><span class="badge {kind}">{kind}</span>'
            f'<div><small>level 1</small> <b>{escape(item.level1 or "-")}</b></div>'
            f'<div><small>level 2</small> <b>{escape(item.level2 or "-")}</b></div>'
            f'<div class="id">{escape(item.image)}</div></div></div>'
            f'<table class="preds"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table></div>')


def _scoreboard_html(items: list[GalleryItem], predictions_by_model: dict[str, list[dict]], levels: list[int]) -> str:
    """Per model and level: on how many of the shown images the top-1 is right (the filter's script updates it)."""
    head = "".join(f"<th>level {lv}: top-1 right</th>" for lv in levels)
    rows = "".join(f"<tr><th>{escape(model)}</th>" + "".join(
        f'<td data-count="{m}-{lv}">{sum(p[f"level{lv}"]["true_rank"] == 1 for p in preds)} of {len(items)}</td>'
        for lv in levels) + "</tr>" for m, (model, preds) in enumerate(predictions_by_model.items()))
    return f'<table class="summary scoreboard"><thead><tr><th>on the shown images</th>{head}</tr></thead>' \
           f"<tbody>{rows}</tbody></table>"


def _filter_html(items: list[GalleryItem]) -> str:
    groups = [("held-out concepts (level 1)", sorted({it.level1 for it in items if it.held_out and it.level1}), "1"),
              ("seen concepts (level 1)", sorted({it.level1 for it in items if not it.held_out and it.level1}), "1"),
              ("level-2 concepts", sorted({it.level2 for it in items if it.level2}), "2")]
    options = "".join(f'<optgroup label="{escape(name)}">'
                      + "".join(f'<option value="{lv}:{escape(v)}">{escape(v)}</option>' for v in values)
                      + "</optgroup>" for name, values, lv in groups if values)
    return ('<label>concept <select id="concept"><option value="">all concepts</option>'
            f"{options}</select></label> "
            '<label>level-1 top-1 <select id="outcome"><option value="">any outcome</option>'
            '<option value="all-right">every model right</option><option value="mixed">models disagree</option>'
            '<option value="all-wrong">every model wrong</option></select></label> '
            '<span id="shown"></span>')


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:12px 0 4px}
table.summary{border-collapse:collapse;margin:8px 0;background:#fff}
table.summary th,table.summary td{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.v-better{background:#d4f4d4;font-weight:bold}td.v-worse{background:#f8d0d0;font-weight:bold}
td.v-no{color:#666}
p.note{max-width:1100px}
.legend{color:#555;margin:6px 0}
.filters{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:1}
.filters select{font-size:14px;margin-right:12px}
table.scoreboard{margin:6px 0 0;font-size:13px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:10px;margin-top:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.card[hidden]{display:none}
.top{display:flex;gap:10px;align-items:flex-start}
.top img{border:1px solid #eee;background:#fff}
.truth b{font-size:15px}.truth small{color:#777;display:inline-block;width:48px}
.id{color:#999;font-size:11px;word-break:break-all}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;color:#fff;margin-bottom:4px}
.badge.held-out{background:#8a4fd0}.badge.seen{background:#4f7fd0}
table.preds{border-collapse:collapse;width:100%;margin-top:6px;font-size:13px}
table.preds th{text-align:left;font-weight:600;padding:2px 4px;white-space:nowrap;vertical-align:top}
table.preds td{padding:2px 4px;vertical-align:top;border-radius:4px}
td.right{background:#e3f6e3}td.wrong{background:#fbe6e6}
.mark{float:right;font-weight:bold}td.right .mark{color:#1a7f1a}td.wrong .mark{color:#b02020}
table.preds ol{margin:0;padding-left:18px}
li.true{color:#106010;font-weight:bold;text-decoration:underline}
.rank{color:#b02020;font-size:12px}
"""

SCRIPT = """
(function () {
  var concept = document.getElementById('concept'), outcome = document.getElementById('outcome');
  var shown = document.getElementById('shown');
  var cards = Array.prototype.slice.call(document.querySelectorAll('.card'));
  var counts = Array.prototype.slice.call(document.querySelectorAll('[data-count]'));
  function apply() {
    var want = concept.value, n = 0;
    cards.forEach(function (card) {
      var ok = (!want || card.getAttribute('data-l' + want.charAt(0)) === want.slice(2)) &&
               (!outcome.value || card.getAttribute('data-outcome') === outcome.value);
      card.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = 'showing ' + n + ' of ' + cards.length + ' images';
    counts.forEach(function (cell) {
      var key = cell.getAttribute('data-count');
      var right = document.querySelectorAll('.card:not([hidden]) td.right[data-key="' + key + '"]').length;
      cell.textContent = right + ' of ' + n;
    });
  }
  concept.addEventListener('change', apply);
  outcome.addEventListener('change', apply);
  apply();
})();
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def write_gallery(path: str | os.PathLike, title: str, summary: list[dict], items: list[GalleryItem],
                  predictions_by_model: dict[str, list[dict]], image_root: str | os.PathLike) -> Path:
    """Write one self-contained HTML page: the summary on top (``report.headline_sections``: dicts of ``heading``,
    ``table`` = (header, rows), ``verdict``), a filter by concept and by outcome, and per item its thumbnail, true
    level-1/level-2 concepts and each model's top-k per level (``gallery_predictions``)."""
    for model, preds in predictions_by_model.items():
        if [p["image"] for p in preds] != [it.image for it in items]:
            raise ClearglassError(f"gallery: the predictions of model {model!r} are not for the {len(items)} "
                                  "sampled items in their order")
    if not predictions_by_model:
        raise ClearglassError("gallery: no model's predictions to show")
    levels = [lv for lv in LEVELS if items and all(f"level{lv}" in p[0] for p in predictions_by_model.values())]
    k = max((len(p[f"level{lv}"]["top"]) for ps in predictions_by_model.values() for p in ps for lv in levels),
            default=0)
    cards = []
    for i, item in enumerate(items):
        uri = _thumbnail(resolve_image_path(image_root, item.image), f"gallery, concept {item.concept!r}, "
                                                                     f"image {item.image!r}")
        cards.append(_card(item, uri, {m: preds[i] for m, preds in predictions_by_model.items()}, levels))
    legend = (f"Per image and model: the top-{k} concepts per level, best first; the true concept is <b>underlined in "
              "green</b>; a green cell (✓) means the top-1 is right, a red one (✗) that it is wrong, with the true "
              f"concept's rank when it is not in the top {k}. Hover a concept for its score.")
    page = "\n".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>",
        f"<body><h1>{escape(title)}</h1>", _summary_html(summary), f'<p class="legend">{legend}</p>',
        f'<div class="filters">{_filter_html(items)}', _scoreboard_html(items, predictions_by_model, levels) + "</div>",
        '<div class="grid">', *cards, "</div>", f"<script>{SCRIPT}</script>", "</body></html>\n"])
    return write_text_atomic(page, path)
