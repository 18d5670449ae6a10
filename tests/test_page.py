"""report.html's page: the reports' markdown rendered (targets as a MET / MISSED list, verdict cells, folded
sections, embedded plots), the self-contained page, and the screenshot's errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.page import CSP, markdown_html, write_page
from clearglass_testing.browser import screenshot

REPORT = """# A report on `mini`

**Targets** (test split; 1 seed):

- MET: clear_glass beats clip
- MISSED: retention kept

## Headline

| measure | clip | verdict |
|---|---|---|
| level 1 | 54.4 [50.1, 58.7] | better |
| level 2 | 1.0 [0.0, 2.0] | no clear difference |

Some text
wrapped over lines, see [report.html](report.html).

## test_seen

| task | subset |
|---|---|
| recognition | concept_level1 |

## Plots

![one](plots/a.png)
![two](plots/a.png)

# Appendix: search
"""


def test_markdown_renders_the_reports_subset(tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "plots" / "a.png")
    html = markdown_html(REPORT, tmp_path, fold=["test_seen"])
    assert html.startswith("<h1>A report on <code>mini</code></h1>")
    assert ('<ul class="targets"><li><span class="status met">MET</span>clear_<wbr>glass beats clip</li>'
            '<li><span class="status missed">MISSED</span>retention kept</li></ul>') in html
    assert '<td class="v-better">better</td>' in html and '<td class="v-none">no clear difference</td>' in html
    assert "<th>measure</th><th>clip</th><th>verdict</th>" in html
    assert '<p>Some text wrapped over lines, see <a href="report.html">report.html</a>.</p>' in html
    assert "<h2>Headline</h2>" in html and "<details><summary>test_<wbr>seen</summary>" in html
    assert "<td>concept_<wbr>level1</td>" in html and "<h1>Appendix: search</h1>" in html
    assert re.findall(r'<img src="data:image/png;base64,[^"]+" alt="(\w+)">', html) == ["one", "two"]
    order = [html.index(x) for x in ("<h1>", "status met", "<h2>Headline", "<details>", "<h2>Plots", "Appendix")]
    assert order == sorted(order)
    with pytest.raises(ClearglassError, match="missing.png: plot"):
        markdown_html("![x](missing.png)\n", tmp_path)


def test_page_is_self_contained(tmp_path: Path) -> None:
    path = write_page(tmp_path / "p.html", "A <title>", "<p>body</p>", ".x{}", "var x = 1;")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and f'content="{CSP}"' in page
    assert "<title>A &lt;title&gt;</title>" in page and ".x{}</style>" in page and "<script>var x = 1;</script>" in page


def test_screenshot_names_a_missing_page(tmp_path: Path) -> None:
    with pytest.raises(ClearglassError, match="no such page"):
        screenshot(tmp_path / "none.html", tmp_path / "x.png")


def test_links_go_only_to_relative_or_http_addresses_and_entities_never_become_markup() -> None:
    """Bold and links are read from the markdown as written; entities (report.md's escaped data) become characters
    after that, so never markup; a link to another scheme (javascript:, also written with entities) is text."""
    html = markdown_html("See [docs](https://example.org/a_b), [here](report.html) and **[both](#top)**.\n", ".")
    assert html == ('<p>See <a href="https://example.org/a_b">docs</a>, <a href="report.html">here</a> and '
                    '<b><a href="#top">both</a></b>.</p>')
    hostile = ["[a](javascript:alert%281%29)", "[b](&#106;avascript:alert(1))", "[c](JavaScript:x)",
               "[d](data:text/html,x)", "[e](//evil.example/x)", "[f](/\\evil.example)"]
    html = markdown_html(" ".join(hostile) + "\n", ".")
    assert "<a " not in html and html == f"<p>{' '.join(hostile).replace('&#106;', 'j')}</p>"
    escaped = "&#91;x&#93;(http://example.org) &#42;&#42;y&#42;&#42; &amp;lt;b>"
    assert markdown_html(escaped + "\n", ".") == "<p>[x](http://example.org) **y** &amp;lt;b&gt;</p>"
