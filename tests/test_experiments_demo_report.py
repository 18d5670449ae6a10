"""The demo's report.html from fixture results (no training): report.md's sections in its order with every model,
the plots embedded, and a gallery whose counts equal the headline table's; opened in headless Chromium at 1280 px
wide (no console errors, no sideways scrolling, the filters work) and screenshotted."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearglass.evaluate import evaluate_model, level_labels
from clearglass.experiments.demo.diagnostics import add_clustering
from clearglass.experiments.demo.report import (
    HEADLINE,
    SPLIT_NAMES,
    demo_gallery,
    loss_plot,
    report_parts,
    write_demo_page,
)
from clearglass.experiments.demo.run import compare_models
from clearglass.report import fmt_pct, write_plots
from clearglass_testing.browser import run_chromium, screenshot
from test_gallery import CONFIG, KINDS, kind_concepts, seeded_encoders, write_images

MODELS = ["base", "clip", "clear_glass"]


def fixture_summary(comparisons: dict) -> dict:
    """A demo summary around fixture comparisons: what report.md's set-up quotes, 2 seeds, no search."""
    kinds = {"base": ["thing0"], "novel_test": ["thing4"], "novel_val": [], "held_out": ["thing8"]}
    data = {"level2_groups": ["group0", "group1", "group2"], "build_leaks": 0,
            "concept_word_filter": {"captions_removed": 0}, "concepts": {s: 4 for s in KINDS}, "train_images": 4,
            "test_images": 36, "kinds": kinds, "base_corpus": {"held_out_emoji_seen": [], "novel_emoji_unseen": []}}
    models = {m: {"family": m, "wise_ft": 1.0, "train": {"lr": 0.001}} for m in MODELS[1:]}
    return {"config": {"base": "fixture-base", "baseline": "clip", "method": "clear_glass", "eval": {"k": CONFIG.k}},
            "comparisons": comparisons, "seeds": [0, 1], "data": data, "models": models, "search": None,
            "seconds": 1.0}


def loss_log(path: Path, scale: float) -> Path:
    rows = [{"step": s, "loss": scale / (s + 1)} for s in range(6)] + [{"step": 5, "val/score": 0.3 * scale}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """report.html as the demo writes it, from hand-built encoders: base, clip and clear_glass (2 seeds each)."""
    root = tmp_path_factory.mktemp("demo-page")
    concepts = kind_concepts()
    everything = [c for cs in concepts.values() for c in cs]
    write_images(root, everything)
    per_model: dict[str, list[dict]] = {}
    for model, encoders in seeded_encoders(everything).items():
        for encoder in encoders:
            seed = {}
            for split, cs in concepts.items():
                seed[split] = evaluate_model(encoder, cs, root, CONFIG, model=model, data=split)
                add_clustering(seed[split], encoder, concepts["test_seen"], cs, root,
                               [1, 2] if split == "test_seen" else [2], CONFIG)
            per_model.setdefault(model, []).append(seed)
    comparisons = compare_models(per_model, "clip", "clear_glass", seeds=2)
    out = root / "out"
    plots = [p for split in KINDS for p in write_plots(comparisons[split]["results"], out / "plots" / split,
                                                       SPLIT_NAMES[split], {f"level{lv}": len(level_labels(
                                                           concepts[split], lv)) for lv in (1, 2)})]
    plots.append(loss_plot({m: loss_log(root / f"{m}.jsonl", s) for m, s in (("clip", 2.0), ("clear_glass", 1.0))},
                           {"clip": "clip", "clear_glass": "clear_glass"}, {m: f"C{i}" for i, m in enumerate(MODELS)},
                           out / "plots" / "training_loss.png"))
    sections, appendix = report_parts(fixture_summary(comparisons), plots, out)
    first = {m: e[0] for m, e in seeded_encoders(everything).items()}
    gallery = demo_gallery(comparisons, concepts, list(first), first.__getitem__, root, per_kind=4, seed=0)
    return write_demo_page(out, sections, gallery, appendix, list(comparisons)), comparisons


def test_the_page_follows_report_md_with_every_model_and_the_plots_embedded(demo_page):
    path, _ = demo_page
    page = path.read_text(encoding="utf-8")
    order = [page.index(x) for x in ('<ul class="targets">', "<h2>Headline measures", "<h2>How to read this",
                                     "<h2>Set-up", "<details><summary>test_<wbr>seen", "<h2>Plots",
                                     '<section id="gallery">', "<h1>Appendix: ")]
    assert order == sorted(order)
    assert re.search(r"<li><span class=\"status (met|missed)\">", page)
    header = re.search(r"<thead><tr><th>measure</th>(.*?)</tr></thead>", page).group(1)
    names = [unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<th>(.*?)</th>", header)]
    assert names[:3] == MODELS
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+" alt="(recognition_i2t|recognition_t2i|'
                          r'zero_shot_by_level|training_loss)">', page)) == 10
    assert page.count('class="card"') == 12
    assert not re.search(r"(src|href)=\"(?!data:|report\.html)", page) and "http" not in page.replace("http-equiv", "")



def test_the_demo_report_escapes_the_base_and_model_names_of_its_config(demo_page, tmp_path):
    comparisons = demo_page[1]
    summary = fixture_summary(comparisons)
    summary["config"]["base"] = "<img src=x onerror=alert(1)>"
    summary["models"]["<script>x</script>|y"] = {"family": "<b>f</b>", "wise_ft": 1.0, "train": {"lr": "<i>"}}
    sections, appendix = report_parts(summary, [], tmp_path)
    md = "\n".join([*sections, appendix])
    outside_code = re.sub(r"`[^`]*`", "", md)  # a code span shows its text as is
    assert not re.search(r"<(img|script|b|i)\b", outside_code)
    assert "fine-tuning `<img src=x onerror=alert(1)>`" in md  # a code span shows it as text
    assert "&lt;script>x&lt;/script>&#124;y (&lt;b>f&lt;/b>" in md


def test_the_training_plot_keeps_each_models_colour_in_every_panel(tmp_path, monkeypatch):
    """One panel per loss family and one of validation scores; a model's lines share its colour, named once."""
    import matplotlib.figure
    from matplotlib.colors import to_hex

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    runs = {m: loss_log(tmp_path / f"{m}.jsonl", 1.0) for m in ("clip", "clear_glass", "clip_frozen_text")}
    colours = {"base": "C0", "clip": "C1", "clear_glass": "C2", "clip_frozen_text": "C3"}
    loss_plot(runs, {"clip": "clip", "clear_glass": "clear_glass", "clip_frozen_text": "clip"}, colours,
              tmp_path / "loss.png")
    (fig,) = figures
    drawn = {ax.get_title(): [to_hex(line.get_color()) for line in ax.get_lines()] for ax in fig.axes}
    hexes = {m: to_hex(c) for m, c in colours.items()}
    assert drawn == {"clip loss (seed 0)": [hexes["clip"], hexes["clip_frozen_text"]],
                     "clear_glass loss (seed 0)": [hexes["clear_glass"]],
                     "validation: base-concept recognition": [hexes[m] for m in runs]}
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(runs)


# ----------------------------------------------------------------------------------------------------------
# the page in headless Chromium

# run in the page: errors and CSP violations are collected; after load, the widths (with every folded section
# open too), the headline table, the scoreboard, and the filter set to one kind are written into the DOM, which
# --dump-dom prints
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
function texts(nodes) { return Array.prototype.map.call(nodes, function (n) { return n.textContent; }); }
window.addEventListener('load', function () {
  var html = document.documentElement, images = Array.prototype.slice.call(document.images);
  var widths = [html.scrollWidth];
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  widths.push(html.scrollWidth);
  var headline = Array.prototype.filter.call(document.querySelectorAll('table'), function (t) {
    var th = t.querySelector('th'); return th && th.textContent === 'measure'; })[0];
  var board = Array.prototype.map.call(document.querySelectorAll('td[data-model]'), function (td) {
    return [td.getAttribute('data-model'), td.getAttribute('data-split'), td.getAttribute('data-level'),
            td.querySelector('b').textContent, td.querySelector('.all').textContent,
            td.querySelector('.shown').textContent]; });
  var shown = document.getElementById('shown').textContent;
  var kind = document.getElementById('kind');
  kind.value = 'test_novel';
  kind.dispatchEvent(new Event('change'));
  html.setAttribute('data-check', JSON.stringify({
    widths: widths, viewport: window.innerWidth, errors: checkErrors, shown: shown,
    header: texts(headline.querySelectorAll('thead th')),
    rows: Array.prototype.map.call(headline.querySelectorAll('tbody tr'), function (tr) { return texts(tr.children); }),
    board: board,
    filtered: document.querySelectorAll('.card:not([hidden])').length,
    filteredShown: document.getElementById('shown').textContent,
    filteredBoard: texts(document.querySelectorAll('td[data-model] .shown')),
    undecoded: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length,
    resources: performance.getEntriesByType('resource').map(function (r) { return r.name; })}));
});
</script>"""


def checked(path: Path, tmp_path: Path, width: int, height: int) -> tuple[dict, str]:
    """The checker's findings on the page at ``width`` x ``height``, and Chromium's log."""
    probe = tmp_path / f"checked-{height}.html"
    probe.write_text(path.read_text(encoding="utf-8").replace("</head>", CHECKER + "</head>", 1), encoding="utf-8")
    run = run_chromium(probe, tmp_path / "profile", width, height, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert run.returncode == 0, run.stderr
    found = re.search(r'data-check="([^"]*)"', run.stdout)
    assert found, "the page's load event did not run the checks"
    return json.loads(unescape(found.group(1))), run.stderr


def table_figure(rows: list[list[str]], header: list[str], model: str, split: str, level: int) -> str:
    """The headline table's percent for a model's level-``level`` recognition of a split (its first number)."""
    label = next(h[4] for h in HEADLINE if h[:4] == (split, "recognition", f"concept_level{level}", "i2t_R@1"))
    row = next(r for r in rows if r[0] == label)
    return row[header.index(model)].split()[0]


@pytest.mark.skipif(not __import__("shutil").which("chromium"),
                    reason="chromium not installed: apt-get install chromium (the browser check of report.html)")
def test_report_html_in_headless_chromium(demo_page, tmp_path):
    path, comparisons = demo_page
    for width, height in ((1280, 800), (1280, 2400)):
        check, log = checked(path, tmp_path, width, height)
        assert check["errors"] == [] and not [ln for ln in log.splitlines() if ":CONSOLE" in ln]
        assert check["viewport"] == width and max(check["widths"]) <= width, check["widths"]  # no sideways scrolling
        assert check["undecoded"] == 0 and check["resources"] == []  # every image is a data URI that decodes
        shot = screenshot(path, tmp_path / f"report-{width}x{height}.png", width, height)
        with Image.open(shot) as im:
            assert im.size == (width, height)
            pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50 and pixels.std() > 10  # not blank
    # the gallery's counts are the table's, for every model, split and level
    assert len(check["board"]) == len(MODELS) * len(KINDS) * 2
    for model, split, level, figure, total, shown in check["board"]:
        hits, trials = map(int, total.split("/"))
        assert figure == table_figure(check["rows"], check["header"], model, split, int(level)) + "%"
        assert fmt_pct(hits / trials) + "%" == figure
        results = comparisons[split]["results"][model]
        assert trials == len(results["per_item"][f"recognition/concept_level{level}"]["arrays"]["i2t_R@1_hit"]) * (
            1 if model == "base" else 2)
        assert re.fullmatch(r"shown: \d+/" + str(4 * (1 if model == "base" else 2)), shown)
    assert check["shown"] == "showing 12 of 12 pictures"
    assert check["filtered"] == 4 and check["filteredShown"] == "showing 4 of 12 pictures"
    zero = [s for s, (_, split, *_rest) in zip(check["filteredBoard"], check["board"]) if split != "test_novel"]
    assert set(zero) == {"shown: 0/0"}
