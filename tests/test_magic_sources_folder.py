"""The folder source: ROOT/<concept>/<image> (and depth 2), captions from captions.csv and .txt files, the
caption template and its leak guard, and every bad layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.magic.builder import BuildOptions, build_concepts
from clearglass.magic.labelers import make_labeler
from clearglass.magic.sources.folder import FolderSource
from magic_fixtures import fake_embed


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 120, 10)).save(path)
    return path


def test_depth_one_with_txt_and_sidecar_captions(tmp_path: Path) -> None:
    image(tmp_path / "golden_retriever" / "a.png")
    image(tmp_path / "golden_retriever" / "b.jpg")
    image(tmp_path / "tabby cat" / "c.png")
    (tmp_path / "golden_retriever" / "a.txt").write_text("a dog on grass\n\n  a dog   running  \n")
    (tmp_path / "captions.csv").write_text("filepath,title\ngolden_retriever/a.png,a happy pet\n"
                                           "golden_retriever/b.jpg,sleeping\ntabby cat/c.png,on a sofa\n")
    (tmp_path / "tabby cat" / "notes.md").write_text("ignored")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.png").write_bytes(b"")
    (tmp_path / "tabby cat" / "orphan.txt").write_text("no image")
    source = FolderSource(tmp_path)
    items = list(source)
    assert [(i.image, i.captions, i.hierarchy) for i in items] == [
        ("golden_retriever/a.png", ["a happy pet", "a dog on grass", "a dog running"], ("golden retriever",)),
        ("golden_retriever/b.jpg", ["sleeping"], ("golden retriever",)),
        ("tabby cat/c.png", ["on a sofa"], ("tabby cat",)),
    ]
    assert items[0].path == tmp_path / "golden_retriever" / "a.png"
    assert source.stats["ignored_files"] == {"count": 3, "examples": [".cache/x.png", "tabby cat/notes.md",
                                                                      "tabby cat/orphan.txt"]}
    assert source.stats["captions_csv_rows"] == 3 and source.stats["template_captions"] == 0


def test_depth_two_gives_level2_from_the_outer_folder(tmp_path: Path) -> None:
    image(tmp_path / "animal" / "dog" / "1.png")
    (tmp_path / "animal" / "dog" / "1.txt").write_text("a pet")
    [item] = FolderSource(tmp_path, depth=2)
    assert item.image == "animal/dog/1.png" and item.hierarchy == ("dog", "animal")
    with pytest.raises(ClearglassError, match=r"1.png: an image 2 folder\(s\) below .*ROOT/<concept>/<image> "
                                              r"\(see --folder-depth\)"):
        list(FolderSource(tmp_path))


def test_missing_captions_need_the_template_and_the_template_needs_consent(tmp_path: Path) -> None:
    image(tmp_path / "dog" / "1.png")
    image(tmp_path / "dog" / "2.png")
    (tmp_path / "dog" / "2.txt").write_text("a pet in a park")
    with pytest.raises(ClearglassError, match=r"1.png: no caption \(no row in captions.csv, no 1.txt beside it\)"):
        list(FolderSource(tmp_path))
    with pytest.raises(ClearglassError, match="writes the concept name into every caption.*--allow-concept-captions"):
        FolderSource(tmp_path, caption_template="a picture of a {}")
    with pytest.raises(ClearglassError, match="expected one {} for the concept"):
        FolderSource(tmp_path, caption_template="a picture", allow_concept_captions=True)
    source = FolderSource(tmp_path, caption_template="a picture of a {}", allow_concept_captions=True)
    assert [i.captions for i in source] == [["a picture of a dog"], ["a pet in a park"]]
    assert source.stats["template_captions"] == 1 and source.stats["allow_concept_captions"] is True
    assert source.stats["caption_template"] == "a picture of a {}"
    assert [i.names_concept for i in source] == [True, False]
    records, build = build_concepts(source, make_labeler("truth"), BuildOptions(min_group_size=1, progress=False,
                                                                                n_hard_negatives=0), embed=fake_embed)
    assert build["source_stats"]["template_captions"] == 1  # reported in the build stats
    # the template caption is trained on whole, not as the bare "a picture of a", and counted as the leak it is
    new = {im.image: im.new_captions for c in records for im in c.train_images + c.test_images}
    assert new == {"dog/1.png": ["a picture of a dog"], "dog/2.png": ["a pet in a park"]}
    assert build["leaks"]["count"] == 1 and build["leaks"]["examples"][0]["words"] == ["dog"]


def test_empty_captions_are_counted_or_an_error_when_strict(tmp_path: Path) -> None:
    image(tmp_path / "dog" / "1.png")
    (tmp_path / "dog" / "1.txt").write_text("a pet")
    (tmp_path / "captions.csv").write_text("filepath,title\ndog/1.png,\n")
    source = FolderSource(tmp_path)
    assert [i.captions for i in source] == [["a pet"]]
    assert source.stats["empty_captions"] == {"count": 1, "examples": [f"{tmp_path / 'captions.csv'}:2"]}
    with pytest.raises(ClearglassError, match=r"captions.csv:2: empty caption"):
        list(FolderSource(tmp_path, strict=True))


@pytest.mark.parametrize("setup, complaint", [
    (lambda r: image(r / "loose.png"), "loose.png: a file directly in the image folder"),
    (lambda r: (r / "captions.csv").write_text("filepath,title\ndog/9.png,x\n"),
     r"captions.csv:2: 'dog/9.png' is not an image under"),
    (lambda r: (r / "captions.csv").write_text("path,title\ndog/1.png,x\n"), r"no column 'filepath' \(--csv-img-key\)"),
])
def test_bad_layouts_name_the_file(tmp_path: Path, setup, complaint: str) -> None:
    image(tmp_path / "dog" / "1.png")
    (tmp_path / "dog" / "1.txt").write_text("a pet")
    setup(tmp_path)
    with pytest.raises(ClearglassError, match=complaint):
        list(FolderSource(tmp_path))


def test_missing_or_empty_root_and_bad_depth(tmp_path: Path) -> None:
    with pytest.raises(ClearglassError, match="nope: image folder not found"):
        FolderSource(tmp_path / "nope")
    with pytest.raises(ClearglassError, match="--folder-depth 3"):
        FolderSource(tmp_path, depth=3)
    (tmp_path / "dog").mkdir()
    with pytest.raises(ClearglassError, match="no images found"):
        list(FolderSource(tmp_path))


def test_links_to_folders_and_fifos_are_counted_as_ignored(tmp_path: Path) -> None:
    import os

    image(tmp_path / "root" / "cat" / "a.png")
    (tmp_path / "root" / "cat" / "a.txt").write_text("a cat")
    image(tmp_path / "elsewhere" / "dog" / "b.png")
    (tmp_path / "root" / "dog").symlink_to(tmp_path / "elsewhere" / "dog")
    os.mkfifo(tmp_path / "root" / "cat" / "pipe.png")
    source = FolderSource(tmp_path / "root")
    assert [i.image for i in source] == ["cat/a.png"]
    assert source.stats["ignored_files"]["count"] == 2
    assert [e.split(" ")[0] for e in source.stats["ignored_files"]["examples"]] == ["cat/pipe.png", "dog"]


@pytest.mark.parametrize("template", ["a {} in {place}", "a {} of {}", "{.__class__.__doc__}", "a {0}", "{!r}",
                                      "a {:>9}", "a {", "}"])
def test_a_caption_template_has_exactly_one_bare_field(tmp_path: Path, template: str) -> None:
    image(tmp_path / "cat" / "a.png")
    with pytest.raises(ClearglassError, match="expected one {} for the concept and no other"):
        FolderSource(tmp_path, caption_template=template, allow_concept_captions=True)
    assert FolderSource(tmp_path, caption_template="a {{fine}} {}", allow_concept_captions=True)
