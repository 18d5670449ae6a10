import json
from pathlib import Path

import pytest

from clearglass.errors import ClearglassError
from clearglass.magic.schema import (
    ConceptRecord,
    ImageRecord,
    ImageRoot,
    concepts_from_json,
    load_concepts,
    resolve_image_path,
    save_concepts,
)


def test_round_trip(tmp_path):
    rec = ConceptRecord("fruit", ["bird"], [ImageRecord("images/a.png", ["a banana"], ["a banana"], "fruit", "food")],
                        [ImageRecord("1", ["x"], ["y"], "fruit", "food")])
    save_concepts([rec, ConceptRecord("bird")], tmp_path / "m.json")
    assert load_concepts(tmp_path / "m.json") == [rec, ConceptRecord("bird")]


def test_errors_name_file_record_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"concept": "a", "train_images": [{"image": "x.png", "new_captions": "oops"}]}]))
    with pytest.raises(ClearglassError,
                       match=r"bad.json: concept record 0 \('a'\) train_images\[0\]: field 'new_captions'"):
        load_concepts(path)
    with pytest.raises(ClearglassError, match="concept record 1"):
        concepts_from_json([{"concept": "a"}, {"concept": ""}])


def test_resolve_image_path():
    assert resolve_image_path("/r", "000000000139").name == "000000000139.jpg"  # a bare COCO id: 12 digits
    assert resolve_image_path("/r", "images/a.png").as_posix() == "/r/images/a.png"
    assert resolve_image_path("/r", "sub/../a.png").resolve() == Path("/r/a.png")


@pytest.mark.parametrize("image", ["139", "6400004", "64/0004", "images/a", "0000000001390", "", "a\x00.png",
                                   "０００００００００１３９"])
def test_an_id_without_a_suffix_is_a_coco_id_of_12_digits_or_an_error(image):
    with pytest.raises(ClearglassError, match="image id"):
        resolve_image_path("/r", image)


def test_image_ids_stay_in_their_root_unless_allowed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "secret.png"
    (root / "sub").mkdir(parents=True)
    outside.write_bytes(b"x")
    (root / "link").symlink_to(tmp_path)
    escapes = [str(outside), "../secret.png", "sub/../../secret.png", "link/secret.png"]
    for image in escapes:
        with pytest.raises(ClearglassError, match=r"(absolute path|outside the image root).*--allow-outside-root"):
            resolve_image_path(root, image)
        assert resolve_image_path(root, image, allow_outside_root=True).resolve() == outside.resolve()
        assert resolve_image_path(ImageRoot(root, allow_outside=True), image).resolve() == outside.resolve()
        with pytest.raises(ClearglassError):
            resolve_image_path(ImageRoot(root), image)
    assert resolve_image_path(ImageRoot(root), "sub/a.png") == root / "sub" / "a.png"
    assert Path(ImageRoot(root)) == root  # an os.PathLike: it goes wherever an image root folder does


def test_text_safety_names_cleans_and_escapes_control_bidi_and_zero_width_characters():
    from clearglass.magic.schema import clean_text, escaped, unsafe_chars

    text = "\x1b]0;t\x07Bir\u202ethday\u200b Pa\x00rty\tnow"
    assert unsafe_chars(text) == ["U+001B", "U+0007", "U+202E", "U+200B", "U+0000", "U+0009"]
    assert unsafe_chars("a\tcaption\n", caption=True) == []
    assert clean_text(text) == "]0;t Birthday Pa rty now"
    assert clean_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert escaped("a\x1b[2J\u202eb") == "a\\u001b[2J\\u202eb"


def test_names_are_read_in_nfc_and_unknown_keys_name_the_closest_known_one():
    [rec] = concepts_from_json([{"concept": "cafe\u0301", "hard_negative": ["the\u0301"]}])
    assert rec.concept == "caf\u00e9" and rec.hard_negative == ["th\u00e9"]
    with pytest.raises(ClearglassError, match=r"concept record 0: unknown key 'hard_negatives'; did you mean "
                                              r"'hard_negative'\?"):
        concepts_from_json([{"concept": "a", "hard_negatives": []}])


def test_a_zero_width_joiner_inside_an_emoji_sequence_is_kept():
    from clearglass.magic.schema import clean_text, unsafe_chars

    cook = "\U0001F468\u200d\U0001F373"  # man cook
    assert unsafe_chars(f"a {cook} at work") == [] and clean_text(cook) == cook
    assert unsafe_chars("con\u200dcept") == ["U+200D"] and clean_text("con\u200dcept") == "concept"


def test_the_printable_fast_path_skips_no_unsafe_character():
    from clearglass.magic.schema import _is_unsafe, _unsafe_positions

    # printable text is made of printable code points, so the fast path skips nothing if none of them is unsafe: checked
    # alone (at the edge of the text, where a zero-width joiner is unsafe), in both caption modes
    for code in range(0x110000):
        ch = chr(code)
        if ch.isprintable():
            assert not _is_unsafe(ch, 0) and not _is_unsafe(ch, 0, caption=True), hex(code)
    # text that is not printable takes the per-character check, which still finds what is unsafe, and only that
    assert _unsafe_positions("a\x1b[2Jb\u202ec") == [1, 6]
    assert _unsafe_positions("a\tb\u2028c") == [1, 3] and _unsafe_positions("a\tb\u2028c", caption=True) == [3]
    assert _unsafe_positions("a\u00a0b") == []  # a no-break space: not printable to Python, harmless
