"""The picture gallery: seeded sampling, top-k predictions on hand-built encoders, and the page in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import replace
from html import escape, unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.evaluate import EvalConfig, evaluate_model, level_labels
from clearglass.gallery import gallery_predictions, sample_gallery_images, write_gallery
from clearglass.report import compare, headline_sections
from clearglass.magic.schema import ConceptRecord, ImageRecord
from test_evaluate import ConceptEncoder, RandomEncoder, make_concepts

HELD_OUT = {"thing4", "thing5"}
TEMPLATE = "a picture of {}"


def subsets(n_images: int = 3) -> dict[str, list[ConceptRecord]]:
    """make_concepts split in two: thing4 and thing5 held out (no training images), the others seen."""
    concepts = make_concepts(n_images=n_images)
    seen = [replace(c, train_images=[ImageRecord(f"train_{c.concept}.png", ["x"], [], c.concept)])
            for c in concepts if c.concept not in HELD_OUT]
    return {"test_seen": seen, "test_held_out": [c for c in concepts if c.concept in HELD_OUT]}


def write_images(root: Path, concepts: list[ConceptRecord]) -> None:
    """One small PNG per test image: its concept's colour with a white square placed by the image's index."""
    for i, c in enumerate(concepts):
        colour = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 160, 20), (150, 60, 190), (20, 170, 170)][i % 6]
        for j, im in enumerate(c.test_images):
            a = np.zeros((48, 48, 3), np.uint8) + np.array(colour, np.uint8)
            a[4 + 6 * j:20 + 6 * j, 8:24] = 255
            Image.fromarray(a).save(root / im.image)


def labels_by_level(concepts_by_subset: dict[str, list[ConceptRecord]]) -> dict[int, list[str]]:
    everything = [c for cs in concepts_by_subset.values() for c in cs]
    return {lv: level_labels(everything, lv) for lv in (1, 2)}


def test_sampling_is_seeded_with_counts_per_held_out_concept_and_spread_seen_images():
    data = subsets(n_images=10)
    items = sample_gallery_images(data, per_held_out_concept=8, seen=5, seed=0)
    assert items == sample_gallery_images(data, per_held_out_concept=8, seen=5, seed=0)
    assert items != sample_gallery_images(data, per_held_out_concept=8, seen=5, seed=1)
    held = Counter(it.concept for it in items if it.held_out)
    assert held == {"thing4": 8, "thing5": 8}
    assert all(it.subset == "test_held_out" for it in items if it.held_out)
    seen = [it for it in items if not it.held_out]
    assert len(seen) == 5 and {it.concept for it in seen} == {"thing0", "thing1", "thing2", "thing3"}
    assert len({it.image for it in items}) == len(items)
    truth = {im.image: (im.level1, im.level2) for cs in data.values() for c in cs for im in c.test_images}
    assert all((it.level1, it.level2) == truth[it.image] for it in items)
    # fewer images than asked: all of them, none twice
    small = sample_gallery_images(subsets(n_images=3), per_held_out_concept=8, seen=100)
    assert len(small) == 6 * 3 and len({it.image for it in small}) == len(small)
    # a test-only file makes every concept held out: the held-out sample is capped, a seeded subset in order
    held = [it for it in sample_gallery_images(data, per_held_out_concept=8, seen=0) if it.held_out]
    capped = sample_gallery_images(data, per_held_out_concept=8, seen=0, max_held_out=3)
    assert len(held) > 3 and len(capped) == 3 and [it for it in held if it in capped] == capped


def test_predictions_rank_the_truth_and_encode_each_image_once():
    data = subsets()
    items = sample_gallery_images(data, per_held_out_concept=2, seen=4)
    labels = labels_by_level(data)
    everything = [c for cs in data.values() for c in cs]
    encoder = ConceptEncoder(everything)
    preds = gallery_predictions(encoder, items, "/nonexistent-root", labels, TEMPLATE, k=3)
    assert encoder.calls == {"images": len(items), "texts": len(labels[1]) + len(labels[2])}
    for it, p in zip(items, preds):
        assert p["image"] == it.image
        for lv, truth in ((1, it.level1), (2, it.level2)):
            top = p[f"level{lv}"]["top"]
            assert len(top) == 3 and top[0]["label"] == truth and p[f"level{lv}"]["true_rank"] == 1
            assert [x["score"] for x in top] == sorted((x["score"] for x in top), reverse=True)
    adversarial = gallery_predictions(ConceptEncoder(everything, sign=-1), items, "/nonexistent-root", labels,
                                      TEMPLATE, k=3)
    for it, p in zip(items, adversarial):
        assert p["level1"]["true_rank"] == len(labels[1]) and it.level1 not in [x["label"] for x in p["level1"]["top"]]
    with pytest.raises(ClearglassError, match="gallery levels"):
        gallery_predictions(encoder, items, "/nonexistent-root", {3: ["kind0", "kind1"]}, TEMPLATE)


@pytest.fixture()
def gallery(tmp_path: Path) -> tuple[Path, list, dict, list]:
    data = subsets()
    write_images(tmp_path, [c for cs in data.values() for c in cs])
    items = sample_gallery_images(data, per_held_out_concept=3, seen=6)
    labels = labels_by_level(data)
    everything = [c for cs in data.values() for c in cs]
    preds = {"clip": gallery_predictions(RandomEncoder(), items, tmp_path, labels, TEMPLATE),
             "clearglass": gallery_predictions(ConceptEncoder(everything), items, tmp_path, labels, TEMPLATE)}
    config = EvalConfig(k=3, fields=["concept_level1"], levels=[1, 2], tasks=["recognition", "zero_shot"], n_boot=50)
    comparison = compare({"clip": evaluate_model(RandomEncoder(), everything, tmp_path, config),
                          "clearglass": evaluate_model(ConceptEncoder(everything), everything, tmp_path, config)})
    summary = headline_sections(comparison)
    path = write_gallery(tmp_path / "out" / "report.html", "Gallery <test>", summary, items, preds, tmp_path)
    return path, items, preds, summary


def test_gallery_page_holds_every_item_thumbnail_and_marked_truth(gallery):
    path, items, preds, summary = gallery
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>Gallery &lt;test&gt;</title>" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == len(items)
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http://" not in page and "https://" not in page
    assert page.count('class="card"') == len(items)
    # every truth in a model's top-3 is marked, and each top-1 cell says right or wrong
    marked = [unescape(m) for m in re.findall(r'<li class="true"[^>]*>([^<]*)</li>', page)]
    expected = [it.truth(lv) for name in preds for it, p in zip(items, preds[name]) for lv in (1, 2)
                if it.truth(lv) in [x["label"] for x in p[f"level{lv}"]["top"]]]
    assert sorted(marked) == sorted(expected)
    rights = sum(p[f"level{lv}"]["true_rank"] == 1 for ps in preds.values() for p in ps for lv in (1, 2))
    assert page.count('<td class="right"') == rights and page.count('<td class="wrong"') == 4 * len(items) - rights
    (section,) = summary  # the report's headline table and verdict lead the page, verdict words coloured
    header, rows = section["table"]
    assert all(f">{escape(c)}</t" in page for c in header + [c for row in rows for c in row])
    assert all(f'<td class="v-{row[-1].split()[0]}">{row[-1]}</td>' in page for row in rows)
    assert "better" in [row[-1] for row in rows] and f'<p class="note">{escape(section["verdict"])}</p>' in page


def test_gallery_refuses_predictions_of_other_items(gallery, tmp_path):
    _, items, preds, _ = gallery
    with pytest.raises(ClearglassError, match="not for the"):
        write_gallery(tmp_path / "x.html", "t", [], items, {"clip": preds["clip"][1:]}, tmp_path)


# ----------------------------------------------------------------------------------------------------------
# the page in headless Chromium

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=5000"]
# run in the page: errors and CSP violations are collected; after load the image and resource checks, and the
# filter set to one concept, are written into the DOM, which --dump-dom prints
CHECKER = """<script>
var checkErrors = [];
window.addEventListener('error', function (e) {
  checkErrors.push(String(e.message || (e.target && e.target.src)));
}, true);
document.addEventListener('securitypolicyviolation', function (e) { checkErrors.push('CSP: ' + e.violatedDirective); });
var pageConsoleError = console.error;
console.error = function () {
  checkErrors.push(Array.prototype.join.call(arguments, ' '));
  pageConsoleError.apply(console, arguments);
};
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var shownBefore = document.getElementById('shown').textContent;
  var select = document.getElementById('concept');
  select.value = '1:thing4';
  select.dispatchEvent(new Event('change'));
  document.documentElement.setAttribute('data-check', JSON.stringify({
    shown: shownBefore,
    filtered: document.querySelectorAll('.card:not([hidden])').length,
    filteredShown: document.getElementById('shown').textContent,
    images: images.length,
    undecoded: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.alt; }),
    errors: checkErrors,
    resources: performance.getEntriesByType('resource').map(function (r) { return r.name; })}));
});
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, check=True)


def test_gallery_in_headless_chromium(gallery, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install chromium (the browser check of report.html needs it)")
    path, items, _, _ = gallery
    checked = tmp_path / "checked.html"
    checked.write_text(path.read_text(encoding="utf-8").replace("</head>", CHECKER + "</head>", 1), encoding="utf-8")
    run = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", checked.as_uri()], tmp_path / "profile")
    found = re.search(r'data-check="([^"]*)"', run.stdout)
    assert found, "the page's load event did not run the checks"
    check = json.loads(unescape(found.group(1)))
    assert check["errors"] == [] and not [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]
    assert check["images"] == len(items) and check["undecoded"] == []
    assert check["resources"] == []  # nothing fetched: thumbnails are data URIs, no CSS or JS files
    assert check["shown"] == "showing 12 of 12 images"  # the filter's script ran
    assert check["filtered"] == 3 and check["filteredShown"] == "showing 3 of 12 images"  # thing4's 3 images
    assert re.search(r'data-count="1-1">3 of 3<', run.stdout)  # the truth-ranking model: right on all 3

    shot = tmp_path / "shot.png"
    chromium(["--window-size=1280,1400", f"--screenshot={shot}", path.as_uri()], tmp_path / "profile")
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    assert len(colours) > 50 and pixels.std() > 10  # not blank, not one flat colour
    assert {(220, 40, 40), (150, 60, 190)} <= colours  # a seen and a held-out thumbnail were painted
