"""The csv source: open_clip's layout, captions merged per image, concept columns, paths, and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.magic.builder import BuildOptions, build_concepts
from clearglass.magic.labelers import make_labeler
from clearglass.magic.sources.csv import CsvSource
from magic_fixtures import fake_embed

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "tiny-csv" / "captions.csv"


def write(tmp_path: Path, text: str, images: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    """``tmp_path/data.csv`` with ``text``, and 8x8 PNGs for ``images`` under ``tmp_path/img``."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "img" / name)
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_example_rows_merge_into_images_with_their_chains() -> None:
    items = list(CsvSource(EXAMPLE, level_keys=["concept", "parent"]))
    assert len(items) == 18
    first = items[0]
    assert first.image == "images/birthday-party-0.png" and first.path == EXAMPLE.parent / first.image
    assert first.captions == ["Children blow out the candles on a cake.", "Kids in paper hats sit around a table."]
    assert first.hierarchy == ("birthday party", "celebration") and first.origin == "captions.csv:2"
    assert all(item.path.is_file() for item in items)
    assert list(CsvSource(EXAMPLE))[0].hierarchy is None  # no concept columns: a labeler names the concepts


def test_paths_resolve_against_the_image_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "img" / "a.png")
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    path = tmp_path / "lists" / "d.tsv"
    path.parent.mkdir()
    path.write_text(f"file\tcap\n./img/a.png\tone\n{root / 'img' / 'a.png'}\ttwo\n{outside}\tthree\n")
    items = list(CsvSource(path, "file", "cap", "\t", image_root=root))
    assert [(i.image, i.captions) for i in items] == [("img/a.png", ["one", "two"]), (str(outside), ["three"])]
    assert items[0].path == root / "img" / "a.png"


def test_empty_captions_are_counted_or_an_error_when_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "filepath,title\nimg/a.png,a red thing\nimg/a.png,  \nimg/b.png,\n")
    source = CsvSource(path)
    assert [(i.image, i.captions) for i in source] == [("img/a.png", ["a red thing"])]
    assert source.stats["empty_captions"] == {"count": 2, "lines": [3, 4]}
    assert source.stats["images_without_captions"] == {"count": 1, "examples": ["img/b.png"]}
    assert source.stats["rows"] == 3 and source.stats["images"] == 1
    with pytest.raises(ClearglassError, match=r"data.csv:3: empty caption in column 'title' \(image 'img/a.png'\)"):
        list(CsvSource(path, strict=True))


@pytest.mark.parametrize("text, options, complaint", [
    ("filepath,caption\nimg/a.png,x\n", {}, r"data.csv: no column 'title' \(--csv-caption-key\); the header has "
                                            r"\['filepath', 'caption'\]"),
    ("filepath,title,title\nimg/a.png,x,y\n", {}, r"data.csv: the header repeats column\(s\) \['title'\]"),
    ("filepath\ttitle\nimg/a.png\tx\n", {}, r"data.csv: the header splits into one column 'filepath\\ttitle' at "
                                            r"separator ','; the file looks tab-separated: pass --csv-separator"),
    ("filepath;title\nimg/a.png;x\n", {}, "looks semicolon-separated: pass --csv-separator ';'"),
    ("filepath,title\nimg/a.png,x,extra\n", {}, "data.csv:2: 3 fields, expected 2 as in the header"),
    ("filepath,title\n,x\n", {}, "data.csv:2: empty image path in column 'filepath'"),
    ("filepath,title\nimg/a,x\n", {}, "data.csv:2: image path 'img/a' has no file suffix"),
    ("filepath,title\n\"img/a.png,x\n", {}, "data.csv:.*not valid CSV"),
    ("", {}, "data.csv: no header row"),
    ("filepath,title,c1,c2\nimg/a.png,x,dog,animal\nimg/a.png,y,cat,animal\n", {"level_keys": ["c1", "c2"]},
     r"data.csv:3: image 'img/a.png' has concepts \('cat', 'animal'\), but line 2 gave \('dog', 'animal'\)"),
    ("filepath,title,c1,c2\nimg/a.png,x,,animal\n", {"level_keys": ["c1", "c2"]},
     "data.csv:2: concept columns .* expected level1 and no empty level below a filled one"),
    ("filepath,title\nimg/a.png,x\n", {"level_keys": ["title"]}, "'title' is already the --csv-caption-key column"),
    ("filepath,title\nimg/a.png,x\n", {"level_keys": list("abcde")}, "at most 4 concept columns"),
    ("filepath,title\nimg/a.png,x\n", {"separator": "::"}, "CSV separator '::': expected one character"),
])
def test_bad_input_names_the_file_and_line(tmp_path: Path, text: str, options: dict, complaint: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ClearglassError, match=complaint):
        list(CsvSource(path, **options))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClearglassError, match="nope.csv: CSV file not found"):
        list(CsvSource(tmp_path / "nope.csv"))


def test_unreadable_image_names_the_row_or_is_skipped_and_counted(tmp_path: Path) -> None:
    lines = [f"img/{c}{j}.png,a thing {c} {j},{c}" for c in "ab" for j in range(3)]
    path = write(tmp_path, "filepath,title,concept\n" + "\n".join(lines) + "\nimg/bad.png,broken,a\n",
                 images=tuple(f"{c}{j}.png" for c in "ab" for j in range(3)))
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    source = CsvSource(path, level_keys=["concept"])
    options = BuildOptions(min_group_size=2, progress=False, n_hard_negatives=1)
    with pytest.raises(ClearglassError, match=r"bad.png: image 'img/bad.png' \(data.csv:8\): not a readable image"):
        build_concepts(source, make_labeler("truth"), options, embed=fake_embed)
    options.skip_bad_images = True
    records, build = build_concepts(source, make_labeler("truth"), options, embed=fake_embed)
    assert build["bad_images"]["count"] == 1 and build["bad_images"]["examples"][0]["image"] == "img/bad.png"
    assert build["source_stats"]["rows"] == 7 and {r.concept for r in records} == {"a", "b"}


def test_a_byte_order_mark_before_the_header_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.write_bytes("\ufefffilepath,title\nimg/a.png,a red thing\n".encode())
    assert [(i.image, i.captions) for i in CsvSource(path)] == [("img/a.png", ["a red thing"])]


def test_repeated_rows_are_counted_once_and_nul_bytes_are_cleaned_and_counted_by_the_build(tmp_path: Path) -> None:
    path = write(tmp_path, "filepath,title,concept\nimg/a.png,a red thing,x\nimg/a.png,a red thing,x\n"
                           "img/b.png,a blue\x00 thing,x\n")
    source = CsvSource(path, level_keys=["concept"])
    records, build = build_concepts(source, make_labeler("truth"), BuildOptions(min_group_size=1, progress=False),
                                    embed=fake_embed, image_root=tmp_path)
    assert source.stats["repeated_rows"] == {"count": 1, "lines": [3]}
    assert build["cleaned_texts"]["count"] == 1 and build["cleaned_texts"]["examples"][0]["image"] == "img/b.png"
    captions = [c for r in records for im in r.train_images + r.test_images for c in im.old_captions]
    assert sorted(captions) == ["a blue thing", "a red thing"]
