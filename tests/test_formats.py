"""Readers for HierarCaps (official CSV, reference JSON) and BREEDS (reference JSON) test sets."""

from __future__ import annotations

import json

import pytest

from clearglass.errors import ClearglassError
from clearglass.formats import load_test_set
from clearglass.magic.schema import resolve_image_path


def test_hierarcaps_csv(tmp_path):
    path = tmp_path / "hc.csv"
    path.write_text('id,captions,image_url\n'
                    '0,"bird => blue bird => blue bird on branch => A blue bird sitting on a branch, in autumn",'
                    'http://images.cocodataset.org/val2014/COCO_val2014_000000100489.jpg\n')
    [c] = load_test_set([path], "hierarcaps-csv")
    im = c.test_images[0]
    assert c.concept == "hierarcaps-0" and im.image == "COCO_val2014_000000100489.jpg"
    assert (im.level4, im.level3, im.level2) == ("bird", "blue bird", "blue bird on branch")
    assert im.level1 == im.old_captions[0] == "A blue bird sitting on a branch, in autumn"
    path.write_text("id,captions,image_url\n1,a => b,http://x/y.jpg\n")
    with pytest.raises(ClearglassError, match="row 2.*4 non-empty texts"):
        load_test_set([path], "hierarcaps-csv")
    path.write_text('id,captions,image_url\n0,"a => b => c => a caption\nover two lines",http://x/a.jpg\n'
                    '1,a => b,http://x/y.jpg\n')  # the bad row is on line 4 of the file
    with pytest.raises(ClearglassError, match="row 4.*4 non-empty texts"):
        load_test_set([path], "hierarcaps-csv")
    path.write_text("id,captions,image_url\n1,,http://x/y.jpg\n")
    with pytest.raises(ClearglassError, match="row 2: column 'captions' is empty"):
        load_test_set([path], "hierarcaps-csv")
    for separator in "\t;":  # a file split by another separator: what a HierarCaps CSV is, and no flag to pass
        path.write_text(separator.join(["id", "captions", "image_url"]) + "\n1" + separator + "a => b => c => d"
                        + separator + "http://x/y.jpg\n")
        with pytest.raises(ClearglassError, match="expected a comma-separated HierarCaps CSV with the columns id, "
                                                  "captions, image_url$"):
            load_test_set([path], "hierarcaps-csv")


def test_hierarcaps_json(tmp_path):
    path = tmp_path / "hc.json"
    path.write_text(json.dumps([{"concept": "dog", "images": ["123"],
                                 **{f"general_captions_level{n}": [f"text{n}", "other"] for n in (1, 2, 3, 4)}}]))
    [c] = load_test_set([path], "hierarcaps-json")
    im = c.test_images[0]
    assert im.levels() == ("text1", "text2", "text3", "text4") and im.old_captions == ["text1", "other"]
    assert resolve_image_path("/r", im.image).name == "000000000123.jpg"
    path.write_text(json.dumps([{"concept": "dog", "images": ["1"]}]))
    with pytest.raises(ClearglassError, match="record 0 \\('dog'\\).*general_captions_level1"):
        load_test_set([path], "hierarcaps-json")


def test_breeds_files_are_concatenated(tmp_path):
    paths = []
    for k, name in enumerate(["living", "non_living"]):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps([{"concept": f"c{k}", "images": [f"n0000000{k}_12"], "general_captions_level1": ["x"],
                                  "level1": f"a{k}", "level2": f"b{k}", "level3": f"d{k}"}]))
        paths.append(p)
    concepts = load_test_set(paths, "breeds")
    assert [c.concept for c in concepts] == ["c0", "c1"]
    im = concepts[1].test_images[0]
    assert im.image == "n00000001/n00000001_12.JPEG" and im.levels() == ("c1", "a1", "b1", "d1")
    with pytest.raises(ClearglassError, match="unknown test set format"):
        load_test_set(paths, "imagenet")
