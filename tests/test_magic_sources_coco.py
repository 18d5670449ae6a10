import json

import pytest

from clearglass.errors import ClearglassError
from clearglass.magic.schema import resolve_image_path
from clearglass.magic.sources.coco import CocoSource
from magic_fixtures import write_coco


def test_reads_items_in_id_order(tmp_path):
    write_coco(tmp_path, {139: ["A dog.", "a  brown dog"], 7: ["a cat"]})
    items = list(CocoSource(tmp_path, "val2017"))
    assert [i.image for i in items] == ["000000000007.jpg", "000000000139.jpg"]
    assert items[1].captions == ["A dog.", "a brown dog"]
    assert items[1].path == resolve_image_path(tmp_path / "val2017", items[1].image).resolve()
    assert items[1].path.is_file() and items[1].hierarchy is None
    assert len(list(CocoSource(tmp_path, "val2017", max_images=1))) == 1


def test_bad_caption_files_name_file_and_record(tmp_path):
    with pytest.raises(ClearglassError, match="captions_val2017.json: COCO caption file not found"):
        list(CocoSource(tmp_path))
    path = write_coco(tmp_path, {1: ["a cat"]})
    path.write_text("{not json")
    with pytest.raises(ClearglassError, match="COCO caption file is not valid JSON"):
        list(CocoSource(tmp_path))
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "ok"}, {"image_id": 2, "caption": "x"}]}))
    with pytest.raises(ClearglassError, match=r"annotations\[1\]: image_id 2 is not in 'images'"):
        list(CocoSource(tmp_path))
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "ok"}]}))
    with pytest.raises(ClearglassError, match="image id 2 .* has no captions"):
        list(CocoSource(tmp_path))
