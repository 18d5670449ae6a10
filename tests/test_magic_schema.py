import json

import pytest

from clearglass.errors import ClearglassError
from clearglass.magic.schema import (ConceptRecord, ImageRecord, concepts_from_json, load_concepts,
                                     resolve_image_path, save_concepts)


def test_round_trip(tmp_path):
    rec = ConceptRecord("fruit", ["bird"], [ImageRecord("images/a.png", ["a banana"], ["a banana"], "fruit", "food")],
                        [ImageRecord("1", ["x"], ["y"], "fruit", "food")])
    save_concepts([rec, ConceptRecord("bird")], tmp_path / "m.json")
    assert load_concepts(tmp_path / "m.json") == [rec, ConceptRecord("bird")]


def test_errors_name_file_record_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"concept": "a", "train_images": [{"image": "x.png", "new_captions": "oops"}]}]))
    with pytest.raises(ClearglassError, match=r"bad.json: concept record 0 \('a'\) train_images\[0\]: field 'new_captions'"):
        load_concepts(path)
    with pytest.raises(ClearglassError, match="concept record 1"):
        concepts_from_json([{"concept": "a"}, {"concept": ""}])


def test_resolve_image_path():
    assert resolve_image_path("/r", "139").name == "000000000139.jpg"
    assert resolve_image_path("/r", "images/a.png").as_posix() == "/r/images/a.png"
