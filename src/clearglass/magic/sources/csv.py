"""Your own images from a CSV of image paths and captions, in open_clip's layout (``--csv-img-key filepath
--csv-caption-key title``).

One row per (image, caption); the rows of one image are its captions, in file order. Optional concept columns
(``level_keys``, specific -> general) give each image its own chain for the `truth` labeler; without them the
`wordnet` or `llm` labeler names the concepts from the captions. Relative image paths resolve against
``image_root`` (default: the CSV's folder) and are kept as the image ids, so the built dataset is read with that
root (``--images`` / ``images=``); an absolute path under the root is made relative to it.

Bad input is a `ClearglassError` naming the file and line: a missing or repeated header column, one header column
only (a wrong separator: the message names the likely one), a row with another number of fields than the header,
an empty image path or a path without a file suffix, two chains for one image, a gap in a chain, no data row. An
empty caption is skipped and counted in ``stats`` (an error with ``strict``); so are an image left without captions
and a row that repeats an earlier (image, caption).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clearglass.errors import ClearglassError
from clearglass.io import read_text
from clearglass.magic.sources import SourceItem

SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
MAX_LEVELS = 4
MAX_EXAMPLES = 10


def read_csv(path: str | os.PathLike, separator: str, columns: dict[str, str],
             expected: str = "") -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped value}) for every non-blank data row, restricted to ``columns``.

    ``columns`` maps each needed column name to the option that named it, for the error messages. The header
    must name each column once; every row must have as many fields as the header. A header that is one column
    is an error that says ``expected`` (what the file should be) or, by default, which ``--csv-separator`` to pass.
    """
    path = Path(path)
    if len(separator) != 1:
        raise ClearglassError(f"CSV separator {separator!r}: expected one character "
                              "(for a tab: --csv-separator $'\\t')")
    reader = csv.reader(io.StringIO(read_text(path, "CSV file"), newline=""), delimiter=separator, strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader if row]
    except csv.Error as e:
        raise ClearglassError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    if not any(header):
        raise ClearglassError(f"{path}: no header row; expected the column names {sorted(columns)} on the first line")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ClearglassError(f"{path}: the header repeats column(s) {repeated}; expected each column name once")
    if len(header) == 1 and len(columns) > 1:
        raise ClearglassError(f"{path}: the header splits into one column {header[0]!r} at separator {separator!r}; "
                              + (f"expected {expected}" if expected else _separator_hint(header[0], separator)))
    for name, option in columns.items():
        if name not in header:
            raise ClearglassError(f"{path}: no column {name!r} ({option}); the header has {header}")
    index = {name: header.index(name) for name in columns}
    out = []
    for line, row in rows:
        if len(row) != len(header):
            raise ClearglassError(f"{path}:{line}: {len(row)} fields, expected {len(header)} as in the header")
        out.append((line, {name: row[i].strip() for name, i in index.items()}))
    return out


def _separator_hint(header: str, separator: str) -> str:
    """Which separator the one header cell looks split by, as an option to pass."""
    for candidate, name in SEPARATORS.items():
        if candidate != separator and candidate in header:
            flag = "$'\\t'" if candidate == "\t" else repr(candidate)
            return f"the file looks {name}-separated: pass --csv-separator {flag}"
    return "expected a header naming the image, caption (and concept) columns"


def image_id(path_text: str, image_root: Path, where: str) -> tuple[str, Path]:
    """(id stored in the dataset, absolute file path) of an image path as written in a caption file."""
    given = Path(path_text)
    if not given.suffix:
        raise ClearglassError(f"{where}: image path {path_text!r} has no file suffix; expected e.g. .jpg or .png")
    root = Path(os.path.abspath(image_root))
    absolute = Path(os.path.abspath(given if given.is_absolute() else root / given))  # normalised, links kept
    image = absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else absolute.as_posix()
    return image, absolute


@dataclass
class _Image:
    """One image while the rows are read: where it first appeared, its chain, its captions."""

    line: int
    path: Path
    hierarchy: tuple[str, ...] | None
    captions: list[str] = field(default_factory=list)


class CsvSource:
    """The images of one CSV file with their captions (and, with ``level_keys``, their concept chains)."""

    def __init__(self, path: str | os.PathLike, img_key: str = "filepath", caption_key: str = "title",
                 separator: str = ",", level_keys: list[str] | None = None,
                 image_root: str | os.PathLike | None = None, strict: bool = False) -> None:
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.separator = separator
        self.level_keys = list(level_keys or [])
        if len(self.level_keys) > MAX_LEVELS:
            raise ClearglassError(f"--csv-level-keys {self.level_keys}: at most {MAX_LEVELS} concept columns")
        self.columns = {img_key: "--csv-img-key", caption_key: "--csv-caption-key"}
        for key in self.level_keys:
            if key in self.columns:
                raise ClearglassError(f"--csv-level-keys {key!r} is already the {self.columns[key]} column")
            self.columns[key] = "--csv-level-keys"
        if len(self.columns) != 2 + len(self.level_keys):
            raise ClearglassError(f"--csv-img-key and --csv-caption-key are both {img_key!r}: expected two columns")
        self.img_key, self.caption_key = img_key, caption_key
        self.strict = strict
        self.stats: dict = {}

    def _hierarchy(self, row: dict[str, str], where: str) -> tuple[str, ...] | None:
        """The row's chain from the level columns, specific -> general; trailing empty levels are left off."""
        if not self.level_keys:
            return None
        values = [" ".join(row[k].split()) for k in self.level_keys]
        while values and not values[-1]:
            values.pop()
        if not values or not all(values):
            raise ClearglassError(f"{where}: concept columns {self.level_keys} = {[row[k] for k in self.level_keys]}: "
                                  "expected level1 and no empty level below a filled one")
        return tuple(values)

    def _images(self) -> dict[str, _Image]:
        """Every image by id, in first-row order, with its captions; fills ``stats``."""
        images: dict[str, _Image] = {}
        empty: list[int] = []
        repeated: list[int] = []
        rows = read_csv(self.path, self.separator, self.columns)
        if not rows:
            raise ClearglassError(f"{self.path}: a header and no data rows; expected one row per (image, caption)")
        for line, row in rows:
            where = f"{self.path}:{line}"
            if not row[self.img_key]:
                raise ClearglassError(f"{where}: empty image path in column {self.img_key!r}")
            image, path = image_id(row[self.img_key], self.image_root, where)
            hierarchy = self._hierarchy(row, where)
            entry = images.setdefault(image, _Image(line, path, hierarchy))
            if entry.hierarchy != hierarchy:
                raise ClearglassError(f"{where}: image {image!r} has concepts {hierarchy}, but line {entry.line} gave "
                                      f"{entry.hierarchy}; expected one concept chain per image")
            caption = " ".join(row[self.caption_key].split())
            if caption in entry.captions:
                repeated.append(line)
            elif caption:
                entry.captions.append(caption)
            elif self.strict:
                raise ClearglassError(f"{where}: empty caption in column {self.caption_key!r} (image {image!r}); "
                                      "without --strict it is skipped and counted")
            else:
                empty.append(line)
        bare = [image for image, entry in images.items() if not entry.captions]
        self.stats = {"file": str(self.path), "rows": len(rows), "images": len(images) - len(bare),
                      "empty_captions": {"count": len(empty), "lines": empty[:MAX_EXAMPLES]},
                      "repeated_rows": {"count": len(repeated), "lines": repeated[:MAX_EXAMPLES]},
                      "images_without_captions": {"count": len(bare), "examples": bare[:MAX_EXAMPLES]}}
        return {image: entry for image, entry in images.items() if entry.captions}

    def __iter__(self) -> Iterator[SourceItem]:
        """One item per image with at least one caption, in the order of their first rows."""
        for image, entry in self._images().items():
            yield SourceItem(image=image, path=entry.path, captions=entry.captions, hierarchy=entry.hierarchy,
                             origin=f"{self.path.name}:{entry.line}")
