import pytest
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.magic.schema import ConceptRecord, ImageRecord, save_concepts
from clearglass.magic.validate import validate
from tiny_magic import write_tiny_magic


def im(name, l1="a", l2="p", caps=("x",)):
    return ImageRecord(name, ["old"], list(caps), l1, l2)


def test_clean_dataset_has_no_problem(tmp_path):
    assert validate(write_tiny_magic(tmp_path)) == []


def test_every_problem_is_reported_with_record_and_field(tmp_path):
    for name in ("ok.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    records = [
        ConceptRecord("a", ["zzz"], [im("ok.png"), im("missing.png", l2="q")], [im("ok.png", caps=("",))]),
        ConceptRecord("b", ["b"], [im("b.png", l1="b", caps=())]),
    ]
    save_concepts(records, tmp_path / "m.json")
    problems = validate(tmp_path / "m.json")
    got = {(p.record, p.field) for p in problems}
    assert got == {
        (0, "hard_negative[0]"),            # not a concept
        (0, "train_images[1].image"),       # missing on disk
        (0, "test_images[0].image"),        # duplicate id
        (0, "test_images[0].new_captions[0]"),  # empty caption
        (0, "level1..level4"),              # chains disagree
        (1, "hard_negative[0]"),            # own name
        (1, "train_images[0].new_captions"),  # no captions
    }
    assert all(p.file.endswith("m.json") for p in problems)
    assert "missing.png is missing" in str(next(p for p in problems if p.field == "train_images[1].image"))
    assert len(validate(tmp_path / "m.json", check_images=False)) == len(problems) - 1


def test_unusable_image_files_are_problems(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    Image.new("L", (30, 30)).save(tmp_path / "big.png")
    names = ["good.png", "empty.png", "text.png", "folder.png", "big.png"]
    save_concepts([ConceptRecord("a", [], [im(n) for n in names])], tmp_path / "m.json")
    problems = {p.field: p.message for p in validate(tmp_path / "m.json", max_pixels=400)}
    assert set(problems) == {f"train_images[{j}].image" for j in range(1, 5)}
    assert "empty file" in problems["train_images[1].image"]
    assert "not a readable image" in problems["train_images[2].image"]
    assert "is a folder" in problems["train_images[3].image"]
    assert "900 pixels is over the limit of 400" in problems["train_images[4].image"]
    assert validate(tmp_path / "m.json", check_images=False) == []


def test_ids_outside_the_root_or_without_a_suffix_are_problems_unless_allowed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "000006400004.jpg")
    ids = [str(tmp_path / "outside.png"), "../outside.png", "6400004", "../000006400004"]
    save_concepts([ConceptRecord("a", [], [im(i) for i in ids])], root / "m.json")
    for check_images in (True, False):  # the ids are checked even when the files are not
        problems = validate(root / "m.json", check_images=check_images)
        assert [p.field for p in problems] == [f"train_images[{j}].image" for j in range(4)]
        assert "absolute path" in problems[0].message and "outside the image root" in problems[1].message
        assert "has no file suffix" in problems[2].message and "has no file suffix" in problems[3].message
    allowed = validate(root / "m.json", allow_outside_root=True)
    assert [p.field for p in allowed] == ["train_images[2].image", "train_images[3].image"]  # suffixes still matter


def test_an_empty_dataset_is_a_problem_and_a_missing_root_an_error(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    [problem] = validate(tmp_path / "empty.json")
    assert str(problem) == f"{tmp_path / 'empty.json'}: dataset: no concept records: expected a list of at least one"
    path = write_tiny_magic(tmp_path)
    with pytest.raises(ClearglassError, match=r"image root .*nowhere: not found; expected the folder"):
        validate(path, tmp_path / "nowhere")
    with pytest.raises(ClearglassError, match=r"image root .*magic.json: not a folder"):
        validate(path, path)
