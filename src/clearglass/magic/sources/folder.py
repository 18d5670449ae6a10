"""Your own images sorted into concept folders: ``ROOT/<level1>/<image>``, or ``ROOT/<level2>/<level1>/<image>``
with ``depth=2``.

Folder names are the concepts, underscores read as spaces ("golden_retriever" -> "golden retriever"); each image
carries that chain for the `truth` labeler. Captions come from a sidecar ``ROOT/captions.csv`` (columns named as
for the csv source, by default open_clip's ``filepath`` and ``title``; paths relative to ROOT; several rows per
image) and from a ``.txt`` file beside an image with the same stem (one caption per non-empty line); an image
gets both. An image without a caption is an error unless ``caption_template`` (e.g. "a picture of a {}", the
level1 concept filling ``{}``) writes one. Such a caption names the concept, which the leak check exists to
prevent, so a template is refused unless ``allow_concept_captions``; the stats report it and count its captions.
A labeler keeps a template caption whole (its item ``names_concept``): cut out, the concept word would leave the
bare template, the same text for every concept. So the build trains on the caption that names the concept and
counts each one as a leak (``--filter-leaks`` drops them).

Image ids are paths relative to ROOT, which is the built dataset's image root. A file directly in ROOT (other
than captions.csv) or an image at another depth than the layout's is an error. Hidden files and folders, files
that are neither images nor captions, ``.txt`` files without an image and the build's own output (its dataset and
stats files, written into ROOT) are left out and counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from clearglass.config import one_blank_field
from clearglass.errors import ClearglassError
from clearglass.io import read_text
from clearglass.magic.sources import SourceItem
from clearglass.magic.sources.csv import MAX_EXAMPLES, image_id, read_csv

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIDECAR = "captions.csv"
LAYOUTS = {1: "ROOT/<concept>/<image>", 2: "ROOT/<level2>/<level1>/<image>"}


def concept_name(folder: str) -> str:
    """A folder name as a concept: underscores read as spaces, whitespace collapsed."""
    return " ".join(folder.replace("_", " ").split())


class FolderSource:
    """The images under ROOT's concept folders, with captions from captions.csv, .txt files or a template."""

    def __init__(self, root: str | os.PathLike, depth: int = 1, caption_template: str | None = None,
                 allow_concept_captions: bool = False, img_key: str = "filepath", caption_key: str = "title",
                 separator: str = ",", strict: bool = False, outputs: Sequence[str | os.PathLike] = ()) -> None:
        self.root = Path(root)
        self.outputs = {Path(p).resolve() for p in outputs}  # the build's own files, left out when inside ROOT
        if not self.root.is_dir():
            raise ClearglassError(f"{self.root}: image folder not found (expected {LAYOUTS.get(depth, LAYOUTS[1])})")
        if depth not in LAYOUTS:
            raise ClearglassError(f"--folder-depth {depth}: expected 1 ({LAYOUTS[1]}) or 2 ({LAYOUTS[2]})")
        if caption_template is not None:
            if not one_blank_field(caption_template):
                raise ClearglassError(f"--caption-template {caption_template!r}: expected one {{}} for the concept "
                                      "and no other {...} field (write {{ and }} for braces)")
            if not allow_concept_captions:
                raise ClearglassError(f"--caption-template {caption_template!r} writes the concept name into every "
                                      "caption it makes, which the concept-word leak check forbids; pass "
                                      "--allow-concept-captions to use it anyway (the stats report it)")
        self.depth = depth
        self.caption_template = caption_template
        self.allow_concept_captions = allow_concept_captions
        self.columns = {img_key: "--csv-img-key", caption_key: "--csv-caption-key"}
        self.img_key, self.caption_key = img_key, caption_key
        self.separator = separator
        self.strict = strict
        self.stats: dict = {}

    def _scan(self) -> tuple[dict[str, Path], list[Path], list[str]]:
        """(image id -> path, .txt files, ignored files), sorted; a misplaced image is an error."""
        images: dict[str, Path] = {}
        texts: list[Path] = []
        ignored: list[str] = []
        for path in sorted(self.root.rglob("*")):  # symbolic links to folders are not descended into
            rel = path.relative_to(self.root)
            if rel.as_posix() == SIDECAR or path.is_dir() and not path.is_symlink():
                continue
            if path.resolve() in self.outputs:
                ignored.append(f"{rel.as_posix()} (this build's own output)")
                continue
            if path.is_symlink() and path.is_dir() or not path.is_file():
                ignored.append(f"{rel.as_posix()} (not a regular file or folder: a link to a folder, a FIFO, ...)")
            elif any(part.startswith(".") for part in rel.parts):
                ignored.append(rel.as_posix())
            elif len(rel.parts) == 1:
                earlier = " (an earlier build's output? write --out outside the image folder, or move it)" \
                    if path.suffix.lower() == ".json" else ""
                raise ClearglassError(f"{path}: a file directly in the image folder; expected "
                                      f"{LAYOUTS[self.depth]}{earlier}")
            elif path.suffix.lower() == ".txt":
                texts.append(path)
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(rel.as_posix())
            elif len(rel.parts) != self.depth + 1:
                raise ClearglassError(f"{path}: an image {len(rel.parts) - 1} folder(s) below {self.root}; expected "
                                      f"{LAYOUTS[self.depth]} (see --folder-depth)")
            else:
                images[rel.as_posix()] = path
        return images, texts, ignored

    def _captions(self, images: dict[str, Path], texts: list[Path], ignored: list[str]) -> dict[str, list[str]]:
        """Each image's captions from captions.csv, then its .txt file; fills the caption counts of ``stats``."""
        captions: dict[str, list[str]] = {image: [] for image in images}
        empty: list[str] = []
        sidecar = self.root / SIDECAR
        rows = read_csv(sidecar, self.separator, self.columns) if sidecar.is_file() else []
        for line, row in rows:
            where = f"{sidecar}:{line}"
            text = row[self.img_key]
            image = image_id(text, self.root, where)[0] if text else None
            if image not in captions:
                raise ClearglassError(f"{where}: {text!r} is not an image under {self.root} "
                                      f"in the layout {LAYOUTS[self.depth]}")
            self._add(captions[image], [row[self.caption_key]], where, empty)
        by_stem: dict[Path, list[str]] = {}
        for image, path in images.items():
            by_stem.setdefault(path.with_suffix(""), []).append(image)
        for path in texts:
            matches = by_stem.get(path.with_suffix(""), [])
            if not matches:
                ignored.append(path.relative_to(self.root).as_posix())
                continue
            lines = [line for line in read_text(path, "caption file").splitlines() if line.strip()]
            for image in matches:
                self._add(captions[image], lines or [""], str(path), empty)
        self.stats["captions_csv_rows"] = len(rows)
        self.stats["empty_captions"] = {"count": len(empty), "examples": empty[:MAX_EXAMPLES]}
        return captions

    def _add(self, captions: list[str], texts: list[str], where: str, empty: list[str]) -> None:
        """Append the non-empty texts; an empty one is counted (an error with ``strict``)."""
        for text in texts:
            caption = " ".join(text.split())
            if caption:
                captions.append(caption)
            elif self.strict:
                raise ClearglassError(f"{where}: empty caption; without --strict it is skipped and counted")
            else:
                empty.append(where)

    def __iter__(self) -> Iterator[SourceItem]:
        """One item per image, sorted by path; level1 (and level2) from its folders."""
        images, texts, ignored = self._scan()
        if not images:
            raise ClearglassError(f"{self.root}: no images found (suffixes {sorted(IMAGE_SUFFIXES)}) in the layout "
                                  f"{LAYOUTS[self.depth]}")
        self.stats = {"root": str(self.root), "depth": self.depth, "images": len(images),
                      "caption_template": self.caption_template,
                      "allow_concept_captions": self.allow_concept_captions}
        captions = self._captions(images, texts, ignored)
        templated = 0
        items = []
        for image, path in images.items():
            folders = Path(image).parts[:-1]
            hierarchy = tuple(concept_name(f) for f in reversed(folders))  # level1 first
            own = captions[image]
            from_template = not own
            if from_template:
                if self.caption_template is None and path.with_suffix(".txt").is_file():
                    raise ClearglassError(f"{path.with_suffix('.txt')}: the caption file of {image!r} is empty (no "
                                          "line with text); write its captions there, one a line")
                if self.caption_template is None:
                    raise ClearglassError(f"{path}: no caption (no row in {SIDECAR}, no {path.stem}.txt beside it); "
                                          "add one, or pass --caption-template with --allow-concept-captions")
                own = [self.caption_template.format(hierarchy[0])]
                templated += 1
            items.append(SourceItem(image=image, path=Path(os.path.abspath(path)), captions=own, hierarchy=hierarchy,
                                    names_concept=from_template))
        self.stats["template_captions"] = templated
        self.stats["ignored_files"] = {"count": len(ignored), "examples": ignored[:MAX_EXAMPLES]}
        yield from items
