"""One image file → the data set's (side, side, 3) RGB uint8 pixels, or `ImageRejected` with the reason. The decoder:
EXIF orientation, transparency on white, 16-bit → 8-bit, palette and CMYK → RGB, a GIF's or APNG's first frame. The
one resize policy (`fit`, for every way an image enters): the centre square of the shorter side, Lanczos to side."""

from __future__ import annotations

import io
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's name → the name people know; MPO: a phone's JPEG with a second picture inside; an APNG is a PNG
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "BMP": "BMP", "GIF": "GIF", "TIFF": "TIFF"}
# --8<-- [start:extensions]
EXTENSIONS = {".png", ".apng", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# --8<-- [end:extensions]
MAX_PIXELS = 50_000_000  # 50 megapixels: larger than any camera photo a person labels by hand
MIN_SIDE = 8  # below this there is nothing left to classify

ORIENTATION = 0x0112  # the EXIF tag; its values 1..8 name how the stored pixels must turn to be shown upright
TURN_UPRIGHT = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STRAIGHT_ALPHA = {"La": "LA", "RGBa": "RGBA"}  # Pillow converts premultiplied alpha only to its straight twin
# rawmode → (multiplier, divisor) bringing a PNG colour key from the file's bit depth to Pillow's decoded 0..255
KEY_SCALE = {"L;2": (85, 1), "L;4": (17, 1), "RGB;16B": (1, 256)}
LONGEST_DETAIL = 160  # characters of a decoder's message kept in a reason or a note


@dataclass(frozen=True)
class Converted:
    pixels: np.ndarray  # (side, side, 3) uint8
    original_size: tuple[int, int]  # (width, height) as stored in the file
    original_format: str
    notes: tuple[str, ...] = ()  # what was decoded differently from the file's wish (unreadable EXIF)


def format_names() -> str:
    """The formats the decoder takes, as people name them: `PNG, JPEG, WebP, BMP, GIF or TIFF`."""
    *names, last = dict.fromkeys(FORMATS.values())
    return f"{', '.join(names)} or {last}"


class ImageRejected(ValueError):
    """A file that cannot become a training image; the message is the reason shown to people."""


def describe(error: BaseException) -> str:
    """`struct.error: required argument is not an integer`, cut to LONGEST_DETAIL characters."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    text = f"{name}: {error}" if str(error) else name
    return text if len(text) <= LONGEST_DETAIL else text[: LONGEST_DETAIL - 1] + "…"


def open_checked(source: Path | bytes) -> Image.Image:
    """The image of a file or an upload's bytes, header only; ImageRejected saying why it cannot be used."""
    if isinstance(source, bytes | bytearray):
        empty, source = len(source) == 0, io.BytesIO(source)
    else:
        try:
            empty = source.stat().st_size == 0
        except OSError as error:  # gone or unreadable since the scan (a sync tool renaming a temporary file)
            raise ImageRejected(f"could not be read: {error.strerror}") from None
    if empty:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no known image format inside, whatever the extension)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # a header cut short or corrupt
        raise ImageRejected(f"does not decode: {describe(error)}") from None
    width, height = image.size
    if image.format not in FORMATS:
        problem = f"unsupported image format {image.format}; use {format_names()}"
    elif width * height > MAX_PIXELS:
        problem = f"too large: {width}×{height} pixels is over the {MAX_PIXELS:,}-pixel limit"
    elif min(width, height) < MIN_SIDE:
        problem = f"too small: {width}×{height} pixels (at least {MIN_SIDE} a side)"
    else:
        return image
    image.close()
    raise ImageRejected(problem)


def read_orientation(image: Image.Image) -> tuple[Image.Transpose | None, str | None]:
    """How to turn the stored pixels upright (None: as they are), and a note when the EXIF orientation is unusable;
    never raises, unlike `ImageOps.exif_transpose`."""
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception as error:  # any parser fault in a metadata block: the pixels are still good
        return None, f"EXIF orientation unreadable ({describe(error)}): pixels as stored"
    if isinstance(value, numbers.Real) and value in TURN_UPRIGHT:  # 6.0 from a RATIONAL tag reads as 6
        return TURN_UPRIGHT[value], None
    return None, f"EXIF orientation {repr(value)[:40]} is not one of 1..8: pixels as stored"


def colour_key(image: Image.Image) -> int | tuple[int, ...] | None:
    """The colour a PNG's tRNS chunk marks transparent, in the decoded pixels' scale, or None. Call it before
    `load()`: only the undecoded tile tells the file's bit depth."""
    key = image.info.get("transparency")
    if key is None or image.mode not in ("1", "L", "I;16", "RGB"):
        return None
    rawmode = image.tile[0].args if image.tile else None
    multiplier, divisor = KEY_SCALE.get(rawmode, (1, 1)) if isinstance(rawmode, str) else (1, 1)
    if isinstance(key, tuple):
        return tuple(value * multiplier // divisor for value in key)
    return key * multiplier // divisor


def key_alpha(image: Image.Image, key: int | tuple[int, ...]) -> Image.Image:
    """An L alpha band: 0 where a pixel equals `key` in every channel, 255 elsewhere."""
    values = np.asarray(image)
    if values.dtype == bool:  # mode "1": Pillow reports its key as 0 or 255
        values = values.astype(np.uint8) * 255
    matches = values == np.asarray(key, dtype=np.int64)
    if matches.ndim == 3:
        matches = matches.all(axis=-1)
    return Image.fromarray(np.where(matches, 0, 255).astype(np.uint8), "L")


def to_8_bit(image: Image.Image) -> Image.Image:
    """16/32-bit grayscale → L (a 32-bit image within 0..255 is kept as is)."""
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def resizable(image: Image.Image, key: int | tuple[int, ...] | None = None) -> Image.Image:
    """L, LA, RGB or RGBA, any transparency (a palette's, the colour `key`) as a straight alpha band."""
    alpha = key_alpha(image, key) if key is not None else None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = to_8_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    if alpha is not None:
        image = image.convert("L" if image.mode in ("1", "L") else "RGB")
        image.putalpha(alpha)
    if image.mode in STRAIGHT_ALPHA:
        image = image.convert(STRAIGHT_ALPHA[image.mode])
    return image if image.mode in ("L", "LA", "RGB", "RGBA") else image.convert("RGB")


def on_white(image: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA → RGB, an alpha band composited on white."""
    if image.mode in ("LA", "RGBA"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def fit(image: Image.Image, side: int) -> Image.Image:
    """The resize policy: the centre square of the shorter side, Lanczos to side × side (any mode)."""
    return image.resize((side, side), Image.Resampling.LANCZOS, box=square_box(*image.size), reducing_gap=3.0)


def resize_pixels(pixels: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 → (side, side, 3) uint8 by `fit` (decoded arrays, e.g. an archive's, at another size)."""
    if pixels.shape[:2] == (side, side):
        return pixels
    return np.asarray(fit(Image.fromarray(pixels, "RGB"), side), dtype=np.uint8)


def decode(source: Path | bytes, side: int) -> Converted:
    image = open_checked(source)
    try:
        original_size, original_format = image.size, image.format
        if image.format == "JPEG":
            image.draft("RGB", (side * 4, side * 4))  # decode large JPEGs at 1/2…1/8 scale: much faster
        key = colour_key(image)
        image.load()  # a GIF's, an APNG's or a multi-page TIFF's first frame
        turn, note = read_orientation(image)
        # shrink first, then composite and turn: the same arithmetic (Lanczos is linear), without full-size copies
        stored = resizable(image, key)
        small = fit(stored, side)
        del stored
        upright = small.transpose(turn) if turn is not None else small
        pixels = np.asarray(on_white(upright), dtype=np.uint8).copy()
    finally:
        image.close()  # the decoded pixels are released now, not when the garbage collector gets to them
    return Converted(pixels, original_size, original_format, (note,) if note else ())


def convert_image(source: Path | bytes, side: int) -> Converted:
    """A file's or an upload's pixels, (side, side, 3) uint8; ImageRejected, and only that, for every file that cannot
    become pixels."""
    try:
        return decode(source, side)
    except ImageRejected:
        raise
    except Exception as error:  # the boundary: see the docstring
        raise ImageRejected(f"does not decode: {describe(error)}") from error
