"""The io module: image modes scaled to 8-bit RGB against their 8-bit originals, pixel and bomb limits, unreadable
files, text/JSON reads, tensor files that are truncated or crafted, atomic writes and output checks."""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clearglass.errors import ClearglassError
from clearglass.io import (
    check_image,
    check_writable,
    load_image,
    load_torch,
    read_json,
    read_text,
    remove_orphan_temps,
    resolve_device,
    save_torch_atomic,
    write_json_atomic,
)

RGB = np.random.default_rng(0).integers(0, 256, (6, 7, 3)).astype(np.uint8)  # the 8-bit originals
RGB[0, 0], RGB[0, 1] = 0, 255  # full range
GREY = np.asarray(Image.fromarray(RGB).convert("L"))


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def encoded(mode: str) -> tuple[Image.Image, str, np.ndarray]:
    """(an image in ``mode`` made from an 8-bit original, a file suffix that keeps the mode, the original as RGB)."""
    if mode == "L":
        return Image.fromarray(GREY), "png", grey_rgb(GREY)
    if mode == "1":
        bits = GREY > 127
        return Image.fromarray(bits), "png", grey_rgb(bits.astype(np.uint8) * 255)
    if mode == "P":
        palette = RGB.reshape(-1, 3)  # 42 colours: one palette entry per pixel
        im = Image.fromarray(np.arange(len(palette), dtype=np.uint8).reshape(RGB.shape[:2]), "P")
        im.putpalette(palette.ravel().tolist())
        return im, "png", RGB
    if mode in ("RGBA", "LA"):
        base = Image.fromarray(RGB if mode == "RGBA" else GREY)
        base.putalpha(255)
        return base, "png", RGB if mode == "RGBA" else grey_rgb(GREY)
    if mode == "CMYK":
        return Image.fromarray(RGB).convert("CMYK"), "tif", RGB
    if mode == "I;16":
        return Image.fromarray(GREY.astype(np.uint16) * 257), "png", grey_rgb(GREY)
    if mode == "I;16B":  # big-endian 16-bit (PIL's convert to it clips, so it is built from bytes)
        data = (GREY.astype(np.uint16) * 257).astype(">u2").tobytes()
        return Image.frombytes(mode, GREY.shape[::-1], data), "tif", grey_rgb(GREY)
    if mode == "I":  # 32-bit integers holding 16-bit values
        return Image.fromarray(GREY.astype(np.int32) * 257), "tif", grey_rgb(GREY)
    if mode == "F":
        return Image.fromarray(GREY.astype(np.float32) / 255), "tif", grey_rgb(GREY)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I;16B", "I", "F"])
def test_every_mode_loads_as_its_8_bit_original(tmp_path, mode):
    image, suffix, original = encoded(mode)
    path = tmp_path / f"x.{suffix}"
    image.save(path)
    with Image.open(path) as reread:
        assert reread.mode == mode  # the file really holds that mode
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (7, 6)
    np.testing.assert_array_equal(np.asarray(rgb), original)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """PIL's own convert clips a 16-bit image to white; the values are scaled by the 16-bit range instead, so a
    dark 16-bit image (every value <= 255) stays dark."""
    values = np.array([[0, 200, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert np.asarray(im.convert("RGB"))[0, :, 0].tolist() == [0, 200, 255, 255]  # what clipping gives
    assert np.asarray(load_image(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 1, 100, 255]


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)
    rgba[0, 1] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.asarray(load_image(tmp_path / "a.png")).tolist() == [[[255, 255, 255], [10, 20, 30]]]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` greyscale pixels and whose data is one empty row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_pixel_limit_and_decompression_bomb_are_one_line_errors_naming_the_file(tmp_path):
    Image.new("L", (30, 30)).save(tmp_path / "small.png")
    with pytest.raises(ClearglassError, match=r"small.png: image of 30x30 = 900 pixels is over the limit of 400 "
                                              r"\(concept 'a'\) \(raise max_image_pixels"):
        load_image(tmp_path / "small.png", "concept 'a'", max_pixels=400)
    (tmp_path / "large.png").write_bytes(png_header_only(10_000, 10_000))  # over PIL's warning, under its error
    with pytest.raises(ClearglassError, match="large.png: image of 10000x10000 = 100,000,000 pixels is over the "
                                              "limit of 90,000,000"):
        load_image(tmp_path / "large.png")
    with pytest.raises(ClearglassError, match="large.png: not a readable image: image file is truncated"):
        check_image(tmp_path / "large.png", max_pixels=200_000_000)  # a raised limit rules; then the pixels decode
    (tmp_path / "bomb.png").write_bytes(png_header_only(20_000, 20_000))
    for limit in (90_000_000, 10**12):
        with pytest.raises(ClearglassError) as e:
            load_image(tmp_path / "bomb.png", max_pixels=limit)
        assert str(e.value).startswith(f"{tmp_path / 'bomb.png'}: over PIL's decompression-bomb limit of "
                                       f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels")
        assert "\n" not in str(e.value)


def test_unreadable_image_files_name_the_file_and_the_reason(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "dir.png").mkdir()
    Image.fromarray(RGB).resize((64, 64)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    cases = {"empty.png": "not a readable image (rec): empty file", "text.png": "not a readable image (rec): ",
             "dir.png": "is a folder, not an image file (rec)", "missing.png": "image file not found (rec)",
             "cut.png": "not a readable image (rec): "}
    for name, message in cases.items():
        with pytest.raises(ClearglassError) as e:
            load_image(tmp_path / name, "rec")
        assert str(e.value).startswith(f"{tmp_path / name}: {message}") and "\n" not in str(e.value), name
    assert check_image(tmp_path / "whole.png") == (64, 64)
    for name in ("empty.png", "text.png", "dir.png", "missing.png", "cut.png"):  # a whole header is not enough
        with pytest.raises(ClearglassError, match=name):
            check_image(tmp_path / name)


def test_text_and_json_reads_name_the_file_and_what_it_should_be(tmp_path):
    (tmp_path / "latin.json").write_bytes(b'["caf\xe9"]')
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "obj.json").write_text("{}")
    cases = {"latin.json": "dataset file is not UTF-8 text (byte 5: invalid continuation byte)",
             "dir.json": "is a folder; expected a file (dataset file)", "missing.json": "dataset file not found",
             "bad.json": "dataset file is not valid JSON", "obj.json": "expected a JSON list (dataset file), got dict"}
    for name, message in cases.items():
        with pytest.raises(ClearglassError) as e:
            read_json(tmp_path / name, "dataset file", list)
        assert str(e.value).startswith(f"{tmp_path / name}: {message}"), str(e.value)
    (tmp_path / "ok.txt").write_text("é\n", encoding="utf-8")
    assert read_text(tmp_path / "ok.txt", "labels file") == "é\n"


class Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint would do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_tensor_file_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PAYLOAD-RAN"
    torch.save({"weight": torch.ones(2), "x": Payload(marker)}, tmp_path / "zip.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))  # the payload does run when unpickled plainly
    assert (tmp_path / "control").exists()
    messages = {}
    for name in ("zip.pt", "raw.pt"):
        with pytest.raises(ClearglassError) as e:
            load_torch(tmp_path / name, "checkpoint weights")
        messages[name] = str(e.value)
        assert messages[name].startswith(f"{tmp_path / name}: checkpoint weights holds objects that only arbitrary "
                                         "code can rebuild; refused") and "\n" not in messages[name]
    assert messages["zip.pt"].endswith("Trying to load unsupported GLOBAL posix.system whose module posix is blocked")
    assert not marker.exists()


def test_truncated_missing_and_plain_tensor_files(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3, "rng": [1, [2, 3], None]}
    save_torch_atomic(state, tmp_path / "ok.pt")
    loaded = load_torch(tmp_path / "ok.pt", "resume state")
    assert torch.equal(loaded["w"], state["w"]) and loaded["rng"] == state["rng"]
    data = (tmp_path / "ok.pt").read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 20):
        (tmp_path / "cut.pt").write_bytes(data[:n])
        with pytest.raises(ClearglassError) as e:
            load_torch(tmp_path / "cut.pt", "resume state")
        assert str(e.value).startswith(f"{tmp_path / 'cut.pt'}: resume state is truncated or corrupt (")
        assert "\n" not in str(e.value) and len(str(e.value)) < 300
    with pytest.raises(ClearglassError, match="resume state not found"):
        load_torch(tmp_path / "nope.pt", "resume state")
    with pytest.raises(ClearglassError, match="is not a resume state file"):
        load_torch(tmp_path, "resume state")


def test_atomic_writes_leave_no_temp_and_orphans_are_removed(tmp_path):
    with pytest.raises(ClearglassError, match="is a folder; expected a file path to write"):
        write_json_atomic({}, tmp_path)
    write_json_atomic({"a": 1}, tmp_path / "sub" / "x.json")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]
    (tmp_path / "sub" / ".x.json.abc123.tmp").write_bytes(b"half")
    (tmp_path / "sub" / "keep.tmp").write_bytes(b"not ours: no leading dot")
    assert remove_orphan_temps(tmp_path / "sub") == 1
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["keep.tmp", "x.json"]


def test_check_writable_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClearglassError, match="is a folder; expected a file path for the results JSON"):
        check_writable(tmp_path, "results JSON")
    with pytest.raises(ClearglassError, match="is a file; expected a folder for the report"):
        check_writable(tmp_path / "file", "report", folder=True)
    with pytest.raises(ClearglassError, match=r"file/r.json: .*file is a file, so the results JSON cannot be written"):
        check_writable(tmp_path / "file" / "r.json", "results JSON")
    assert check_writable(tmp_path / "new" / "deeper" / "r.json", "results JSON") == tmp_path / "new/deeper/r.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(ClearglassError, match="no permission to write"):
            check_writable(tmp_path / "locked" / "r.json", "results JSON")


def test_atomic_writes_give_the_mode_a_plain_open_would(tmp_path):
    import os
    import stat

    from clearglass.io import write_text_atomic

    old = os.umask(0o027)
    try:
        path = write_text_atomic("x", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ClearglassError, match="pipe.png: not a regular file"):
        load_image(fifo)
    with pytest.raises(ClearglassError, match="pipe.png: not a regular file"):
        read_text(fifo, "dataset file")


def test_only_raster_formats_are_opened(tmp_path):
    eps = tmp_path / "evil.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ClearglassError, match="evil.png: not a readable image"):
        load_image(eps)
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.tif")
    assert load_image(tmp_path / "ok.tif").size == (4, 4)


def test_exif_orientation_turns_the_image_upright(tmp_path):
    image = Image.new("RGB", (6, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "photo.jpg", exif=exif)
    assert load_image(tmp_path / "photo.jpg").size == (2, 6)


def test_resolve_device_refuses_a_cuda_device_torch_cannot_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ClearglassError, match="device 'cuda': .*; use --device auto or cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert (resolve_device("auto"), resolve_device("cuda:0")) == (torch.device("cuda"), torch.device("cuda:0"))
    with pytest.raises(ClearglassError, match=r"device 'cuda:1': torch sees 1 CUDA GPU\(s\), numbered from 0"):
        resolve_device("cuda:1")
    with pytest.raises(ClearglassError, match="device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_pixels_are_refused_not_turned_black(tmp_path, bad):
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[1, 2] = bad
    Image.fromarray(pixels, mode="F").save(tmp_path / "f.tif")
    with pytest.raises(ClearglassError, match=r"f.tif: not a readable image \(rec\): 1 float pixel\(s\) are NaN or "
                                              "infinite"):
        load_image(tmp_path / "f.tif", "rec")


def test_json_that_only_breaks_the_parser_is_named(tmp_path):
    cases = {"deep.json": ("[" * 100_000 + "]" * 100_000, "is nested too deeply to read"),
             "digits.json": ('{"id": ' + "7" * 5000 + "}", "holds a number too long to read (Exceeds the limit"),
             "twice.json": ('{"a": 1, "b": {"c": 1, "c": 2}}', "gives the key 'c' twice in one object"),
             "bom.json": ("\ufeff[1]", None)}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        if message is None:
            assert read_json(tmp_path / name, "thing") == [1]
            continue
        with pytest.raises(ClearglassError) as e:
            read_json(tmp_path / name, "thing")
        assert str(e.value).startswith(f"{tmp_path / name}: thing {message}") and "\n" not in str(e.value), name


def test_a_failed_write_names_the_file_and_leaves_neither_it_nor_a_temporary_file(tmp_path):
    import errno

    from clearglass.io import write_together

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "a.json").write_text("old")
    with pytest.raises(ClearglassError, match=r"b.bin: cannot write \(No space left on device\)"):
        write_together({tmp_path / "a.json": lambda f: f.write(b"new"), tmp_path / "b.bin": full})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and (tmp_path / "a.json").read_text() == "old"


def test_the_meta_device_is_refused():
    with pytest.raises(ClearglassError, match="device 'meta': expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("meta")
