from clearglass.magic.schema import ConceptRecord, ImageRecord, save_concepts
from clearglass.magic.validate import validate
from tiny_magic import write_tiny_magic


def test_clean_dataset_has_no_problem(tmp_path):
    assert validate(write_tiny_magic(tmp_path)) == []


def test_every_problem_is_reported_with_record_and_field(tmp_path):
    def im(name, l1="a", l2="p", caps=("x",)):
        return ImageRecord(name, ["old"], list(caps), l1, l2)

    (tmp_path / "ok.png").write_bytes(b"")
    records = [
        ConceptRecord("a", ["zzz"], [im("ok.png"), im("missing.png", l2="q")], [im("ok.png", caps=("",))]),
        ConceptRecord("b", ["b"], [im("b.png", l1="b", caps=())]),
    ]
    (tmp_path / "b.png").write_bytes(b"")
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
