"""report.html: one self-contained page (inline CSS and JS, images as data URIs, a Content-Security-Policy that forbids
every fetch), so it opens anywhere without a network; its text is the report's own markdown, rendered here.

The markdown is the small subset the reports write: ``#`` headings, paragraphs, ``- `` lists, pipe tables, image
lines ``![alt](file)``, and inline ``**bold**``, ``code`` and ``[text](link)``.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Collection
from html import escape, unescape
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.io import write_text_atomic

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
IMAGE_LINE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
INLINE = re.compile(r"\*\*(?P<bold>.+?)\*\*|\[(?P<label>[^\]]+)\]\((?P<href>[^)\s]+)\)")  # **bold**, [label](href)
STATUS = re.compile(r"(MET|MISSED|NOT MEASURED): ")  # a target's status word, leading a list item
VERDICTS = {"better": "v-better", "worse": "v-worse", "no clear difference": "v-none"}  # report.verdict's words

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa;overflow-wrap:anywhere}
h1{font-size:21px;margin:0 0 8px}h2{font-size:17px;margin:18px 0 6px}h3{font-size:15px}
p,li{max-width:1100px}
table{border-collapse:collapse;margin:8px 0;background:#fff;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.v-better{background:#d4f4d4;font-weight:bold}td.v-worse{background:#f8d0d0;font-weight:bold}td.v-none{color:#666}
ul.targets{list-style:none;padding-left:0}
.status{display:inline-block;min-width:64px;font-weight:bold;font-size:12px;padding:1px 6px;border-radius:4px;
margin-right:6px;text-align:center;color:#fff}
.status.met{background:#1a7f1a}.status.missed{background:#b02020}.status.not-measured{background:#777}
details{margin:6px 0}summary{cursor:pointer;font-weight:600;font-size:15px}
.plots{display:flex;flex-wrap:wrap;gap:8px}
.plots img{max-width:100%;max-height:360px;width:auto;height:auto;border:1px solid #ddd;background:#fff}
code{background:#eee;padding:0 3px;border-radius:3px;font-size:12px}
"""


def _safe_href(href: str) -> bool:
    """Whether a link may be followed: http(s), or relative (no scheme, not ``//host``, no space or control
    character a browser would drop before reading a scheme)."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in href):
        return False
    if re.match(r"https?://", href, re.I):
        return True
    return not re.match(r"[/\\]{2}", href) and ":" not in re.split(r"[/\\?#]", href, maxsplit=1)[0]


def _spans(text: str) -> str:
    """Markdown text without code spans as HTML. **bold** and [text](link) are found in the markdown as written;
    then each text piece's entities (report.md escapes data with them) are read and escaped, so data never becomes
    markup. A link that is neither relative nor http(s) shows as its text."""
    out, at = [], 0
    for m in INLINE.finditer(text):
        out.append(escape(unescape(text[at:m.start()])))
        if m["bold"] is not None:
            out.append(f"<b>{_spans(m['bold'])}</b>")
        elif _safe_href(href := unescape(m["href"])):
            out.append(f'<a href="{escape(href)}">{_spans(m["label"])}</a>')
        else:
            out.append(escape(unescape(m[0])))
        at = m.end()
    return "".join(out) + escape(unescape(text[at:]))


def _inline(text: str) -> str:
    """Escaped text with ``code``, **bold** and [text](link) rendered; long names may break after an underscore."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append(f"<code>{escape(part)}</code>")
            continue
        out.append(re.sub(r"_(?![^<>]*>)", "_<wbr>", _spans(part)))  # not inside a tag's attributes
    return "".join(out)


def data_uri(path: Path, what: str) -> str:
    """A PNG file as a data URI; a missing file is an error naming it."""
    if not path.is_file():
        raise ClearglassError(f"{path}: {what} not found")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(lines: list[str]) -> str:
    """A pipe table (header, separator, rows); verdict words colour their cell."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if not line.startswith("|---")]
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join((f'<td class="{VERDICTS[c]}">' if c in VERDICTS else "<td>") + f"{_inline(c)}</td>"
                                    for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _list(lines: list[str]) -> str:
    """A ``- `` list; an item that starts with a target's status (MET, MISSED) gets a coloured badge."""
    items = []
    for line in lines:
        text = line[2:]
        status = STATUS.match(text)
        if status:
            word = status.group(1)
            text = text[status.end():]
        badge = f'<span class="status {word.lower().replace(" ", "-")}">{word}</span>' if status else ""
        items.append(f"<li>{badge}{_inline(text)}</li>")
    targets = ' class="targets"' if all(STATUS.match(line[2:]) for line in lines) else ""
    return f"<ul{targets}>" + "".join(items) + "</ul>"


def _block(lines: list[str], folder: Path) -> str:
    """One block of consecutive non-empty lines: heading, table, list, images or a paragraph."""
    first = lines[0]
    if first.startswith("#"):
        level = min(len(first) - len(first.lstrip("#")), 6)
        return f"<h{level}>{_inline(first.lstrip('#').strip())}</h{level}>" + (
            _block(lines[1:], folder) if lines[1:] else "")
    if first.startswith("|"):
        return _table(lines)
    if first.startswith("- "):
        return _list(lines)
    if all(IMAGE_LINE.fullmatch(line) for line in lines):
        images = [IMAGE_LINE.fullmatch(line) for line in lines]
        return '<div class="plots">' + "".join(
            f'<img src="{data_uri(folder / m[2], f"plot {m[2]!r} of the report")}" alt="{escape(m[1])}">'
            for m in images) + "</div>"
    return f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>"


def markdown_html(text: str, folder: str | os.PathLike, fold: Collection[str] = ()) -> str:
    """The report's markdown as HTML, its images (relative to ``folder``) embedded; a ``## `` section whose heading
    is in ``fold`` becomes a collapsed ``<details>``."""
    out = []
    for section in re.split(r"(?m)^(?=## )", text):
        lines = section.splitlines()
        heading = lines[0][3:].strip() if section.startswith("## ") else None
        body = lines[1:] if heading is not None else lines
        blocks, current = [], []
        for line in body + [""]:
            if line.strip():
                current.append(line)
            elif current:
                blocks.append(_block(current, Path(folder)))
                current = []
        html = "\n".join(blocks)
        if heading is None:
            out.append(html)
        elif heading in fold:
            out.append(f"<details><summary>{_inline(heading)}</summary>\n{html}\n</details>")
        else:
            out.append(f"<h2>{_inline(heading)}</h2>\n{html}")
    return "\n".join(out)


def write_page(path: str | os.PathLike, title: str, body: str, style: str = "", script: str = "") -> Path:
    """Write one self-contained page: ``body`` (HTML) under the page style plus ``style``, then ``script``."""
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}{style}</style></head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n")
    return write_text_atomic(page, path)
