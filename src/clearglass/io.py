"""Files in and out, in one place: atomic writes, JSON/text/tensor reads whose errors name the file, image loading
with one error mapping and mode conversion, device choice, and content hashes.

Every write goes through :func:`_write_atomic` (a temporary file in the target's folder, then ``os.replace``), so a
killed process leaves either the old file or the new one, plus at worst an orphan ``.NAME.*.tmp`` that
:func:`remove_orphan_temps` clears. Every tensor file is read with ``torch.load(weights_only=True)``: a file that
needs arbitrary code to unpickle is refused, never run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clearglass.errors import ClearglassError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 90_000_000  # about PIL's own decompression-bomb warning threshold (89.5 M pixels)
TEMP_SUFFIX = ".tmp"
DEVICE_TYPES = ("cpu", "cuda", "mps")  # the torch devices a model can compute on here


# ----------------------------------------------------------------------------------------------------------------
# writes


def _write_temp(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """A temporary file beside ``path`` that ``write(file)`` filled; a failed write (a full disk, a lost permission)
    removes it and is a ClearglassError naming ``path``."""
    if path.is_dir():
        raise ClearglassError(f"{path}: is a folder; expected a file path to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise ClearglassError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # the mode a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ClearglassError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return tmp


def write_together(writes: dict[Path, Callable[[IO[bytes]], None]]) -> list[Path]:
    """Write several files, each through its ``write(file)``, so that none replaces its target unless all were
    written: every temporary file first (a failure removes them all), then one ``os.replace`` each, in order."""
    temps: dict[Path, str] = {}
    try:
        for path, write in writes.items():
            temps[Path(path)] = _write_temp(Path(path), write)
    except BaseException:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        raise
    for path, tmp in temps.items():
        os.replace(tmp, path)
    return list(temps)


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it over ``path``."""
    return write_together({Path(path): write})[0]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def json_writer(obj: Any) -> Callable[[IO[bytes]], None]:
    """The writer of ``obj`` as JSON (indent 1, UTF-8), for :func:`write_together`."""
    data = json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8")
    return lambda f: f.write(data)


def torch_writer(obj: Any) -> Callable[[IO[bytes]], None]:
    """The writer of ``obj`` through ``torch.save``, for :func:`write_together`; keep ``obj`` to tensors and plain
    data so :func:`load_torch` can read it."""
    import torch

    return lambda f: torch.save(obj, f)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write bytes atomically."""
    return _write_atomic(path, lambda f: f.write(data))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON (indent 1, UTF-8) atomically."""
    return _write_atomic(path, json_writer(obj))


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically; keep ``obj`` to tensors and plain data so :func:`load_torch` can read it."""
    return _write_atomic(path, torch_writer(obj))


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically, in the format its suffix names."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ClearglassError(f"{path}: unknown image file suffix")
    return _write_atomic(path, lambda f: image.save(f, format=fmt))


def remove_orphan_temps(folder: str | os.PathLike) -> int:
    """Delete the ``.NAME.*.tmp`` files a killed atomic write left in ``folder`` (not recursive); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    orphans = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)


# ----------------------------------------------------------------------------------------------------------------
# reads


def _refuse_special(path: Path, what: str) -> None:
    """A FIFO, socket or device (anything but a regular file or a folder) is refused before it is opened: reading
    one can block forever."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ClearglassError(f"{path}: not a regular file ({what}); expected a file")


def read_text(path: str | os.PathLike, what: str) -> str:
    """A UTF-8 text file, a leading byte-order mark dropped; a missing file, a folder, a FIFO or device, unreadable or
    non-UTF-8 bytes are a ClearglassError naming it."""
    path = Path(path)
    _refuse_special(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClearglassError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ClearglassError(f"{path}: is a folder; expected a file ({what})") from None
    except UnicodeDecodeError as e:
        raise ClearglassError(f"{path}: {what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ClearglassError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def _unique_keys(path: Path, what: str) -> Callable[[list[tuple[str, Any]]], dict]:
    """A ``json.loads`` object hook that refuses a key given twice in one object (JSON keeps the last silently)."""
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) < len(pairs):  # rare: only then look for the key
            seen: set[str] = set()
            key = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ClearglassError(f"{path}: {what} gives the key {key!r} twice in one object; expected each key once")
        return obj
    return hook


def read_json(path: str | os.PathLike, what: str, expect: type | None = None) -> Any:
    """Parse a JSON file; a missing file, invalid JSON (too deeply nested, an integer of thousands of digits, a key
    given twice in one object included) or a top level not of type ``expect`` is a ClearglassError naming the file
    and ``what`` it should be (e.g. "dataset file")."""
    path = Path(path)
    text = read_text(path, what)
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys(path, what))
    except ClearglassError:
        raise
    except RecursionError:
        raise ClearglassError(f"{path}: {what} is nested too deeply to read; expected plain JSON data") from None
    except json.JSONDecodeError as e:
        raise ClearglassError(f"{path}: {what} is not valid JSON ({e})") from None
    except ValueError as e:  # an integer over Python's digit limit
        raise ClearglassError(f"{path}: {what} holds a number too long to read ({str(e).split(';')[0]})") from None
    if expect is not None and not isinstance(raw, expect):
        raise ClearglassError(f"{path}: expected a JSON {'list' if expect is list else 'object'} ({what}), "
                              f"got {type(raw).__name__}")
    return raw


def torch_reason(error: BaseException) -> str:
    """The informative line of a torch.load error: the refused global or operand of a weights-only failure, else
    the first sentence (torch's messages run on with advice that does not apply here)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "unsupported" in ln.lower()]
    first = named[0] if named else lines[0] if lines else type(error).__name__
    return first.split(". ")[0].rstrip(".")


def load_torch(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain data only. A file that needs arbitrary code
    to unpickle (a crafted or foreign checkpoint) is refused; a missing, truncated or corrupt one is an error."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ClearglassError(f"{path}: {what} not found" if not path.exists() else f"{path}: is not a {what} file")
    try:
        with warnings.catch_warnings():  # a raw pickle (not torch's zip layout) also warns about its protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ClearglassError(f"{path}: {what} holds objects that only arbitrary code can rebuild; refused (only "
                              f"tensors and plain data load): {torch_reason(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ClearglassError(f"{path}: {what} is truncated or corrupt ({torch_reason(e)})") from None


# ----------------------------------------------------------------------------------------------------------------
# images


def _scaled_to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Greyscale pixel values scaled (not clipped) to 0..255. ``sixteen_bit`` (modes ``I;16*``): / 257, whatever
    the values. Otherwise (modes ``I`` and ``F``, whose type does not say the range) by the range the values
    fill: floats within [0, 1] x 255, values within [0, 255] as they are, within [0, 65535] / 257, else min..max.
    NaN or infinite pixels are a ValueError (they have no grey level to scale to)."""
    v = values.astype(np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"{int((~np.isfinite(v)).sum())} float pixel(s) are NaN or infinite; expected finite values")
    low, high = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if sixteen_bit:
        v = v / 257.0
    elif values.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        v = v * 255.0
    elif low >= 0 and high <= 255:
        pass
    elif low >= 0 and high <= 65535:
        v = v / 257.0
    else:
        v = (v - low) / (high - low) * 255.0 if high > low else np.zeros_like(v)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any mode PIL opens as 8-bit RGB. 16-bit, 32-bit and float greyscale are scaled (``_scaled_to_uint8``), not
    clipped (PIL's own ``convert`` clips them: a 16-bit image turns white); transparency (RGBA, LA, PA, P with a
    transparent colour) is composited over white; CMYK, YCbCr, 1, L and P convert as PIL does."""
    mode = image.mode
    if mode in ("RGB",):
        return image
    if mode.startswith("I") or mode == "F":
        grey = Image.fromarray(_scaled_to_uint8(np.asarray(image), mode.startswith("I;16")), mode="L")
        return grey.convert("RGB")
    if mode == "P" and "transparency" in image.info or mode in ("PA",):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# the raster formats images are opened as; PIL's others (PostScript via Ghostscript, PDF, ...) are refused
RASTER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "ICO")


@contextlib.contextmanager
def _open_image(path: Path, what: str, max_pixels: int) -> Iterator[Image.Image]:
    """The lazily opened image (header read, pixels not decoded), its size checked against ``max_pixels``; every
    failure inside the block, decoding included, becomes one ClearglassError "PATH: reason (what)"."""
    about = f" ({what})" if what else ""
    _refuse_special(path, what or "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is the limit below it
            im = Image.open(path, formats=RASTER_FORMATS)
        with im:
            pixels = im.size[0] * im.size[1]
            if pixels > max_pixels:
                raise ClearglassError(f"{path}: image of {im.size[0]}x{im.size[1]} = {pixels:,} pixels is over "
                                      f"the limit of {max_pixels:,}{about} (raise max_image_pixels to allow it)")
            yield im
    except ClearglassError:
        raise
    except FileNotFoundError:
        dangling = f" (a symbolic link to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""
        raise ClearglassError(f"{path}: image file not found{dangling}{about}") from None
    except IsADirectoryError:
        raise ClearglassError(f"{path}: is a folder, not an image file{about}") from None
    except Image.DecompressionBombError as e:
        raise ClearglassError(f"{path}: over PIL's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} "
                              f"pixels{about}: {str(e).split(', could be')[0]}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # truncated files are OSErrors
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else \
            "a symbolic link loop" if getattr(e, "errno", None) == errno.ELOOP else str(e)
        raise ClearglassError(f"{path}: not a readable image{about}: {reason}") from None


def load_image(path: str | os.PathLike, what: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The decoded image as 8-bit RGB (:func:`to_rgb8`), turned upright by its EXIF orientation. A missing, unreadable,
    empty or over-large file is a ClearglassError "PATH: reason (what)", ``what`` saying which record it is (e.g.
    "concept 'fruit', image 'a.png'"). Images over PIL's own decompression-bomb limit (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``) are refused by PIL."""
    with _open_image(Path(path), what, max_pixels) as im:
        im.load()
        return to_rgb8(ImageOps.exif_transpose(im))


def check_image(path: str | os.PathLike, what: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) of an image file, with :func:`load_image`'s errors for a missing, empty, unidentifiable,
    over-large or truncated file: the pixels are decoded (a header alone does not pass), not converted."""
    with _open_image(Path(path), what, max_pixels) as im:
        im.load()
        return im.size


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Fail early, before any work, when ``path`` cannot be written as a file (or, with ``folder``, as a folder of
    outputs): a folder where a file is wanted or the reverse, a file on the way, or no write permission."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ClearglassError(f"{path}: is a file; expected a folder for the {what}")
    if not folder and path.is_dir():
        raise ClearglassError(f"{path}: is a folder; expected a file path for the {what}")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ClearglassError(f"{path}: {existing} is a file, so the {what} cannot be written there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ClearglassError(f"{path}: no permission to write in {existing} (the {what})")
    return path


def refuse_overwriting(out: str | os.PathLike, inputs: dict[str, str | os.PathLike], flag: str = "--out") -> None:
    """An error when ``out`` is (or is a link to) one of the ``inputs`` (flag name -> path) that the command reads:
    writing it would replace the input."""
    target = os.path.realpath(out)
    for name, path in inputs.items():
        if os.path.realpath(path) == target:
            raise ClearglassError(f"{flag} {out}: is the {name} this command reads; writing it would replace the "
                                  f"input: choose another {flag}")


# ----------------------------------------------------------------------------------------------------------------
# devices and hashes


def resolve_device(device: str) -> torch.device:
    """A torch device; ``auto`` is CUDA when available, else the CPU. A CUDA device torch cannot use is an error
    naming the device (not the model that would have failed to move to it)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ClearglassError(f"device {device!r}: {e}") from None
    if resolved.type not in DEVICE_TYPES:  # e.g. 'meta' holds no data: every score would be made up
        raise ClearglassError(f"device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ClearglassError(f"device {device!r}: {why}; use --device auto or cpu (device= in a train config)")
        if resolved.index is not None and resolved.index >= count:
            raise ClearglassError(f"device {device!r}: torch sees {count} CUDA GPU(s), numbered from 0")
    return resolved


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_digest(obj: Any) -> str:
    """A short (16 hex) sha256 of JSON data, key order ignored: the identity of items, test sets and settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
