"""Every kind of transparency a supported file can carry is composited on white (`cifarflow.intake.images`).

Each kind stores the same picture: a transparent background and an opaque square in the middle. Converted,
the background is white and the square keeps its colour, exactly as the RGBA version of the picture does:
an alpha band (RGBA PNG, WebP and BMP, LA PNG; PA, La and RGBa in memory), a palette's transparency (a tRNS
index, tRNS alpha bytes, an RGBA palette) and a PNG colour key (tRNS on RGB, 8-bit and 2-bit grayscale,
16-bit grayscale, 16-bit RGB and 1-bit images). The PNGs Pillow cannot write (2-bit grayscale, 16-bit RGB)
and the BMP with an alpha band are written byte by byte (`tests.image_bytes`).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cifarflow.intake.images import convert_image, on_white, resizable
from tests.image_bytes import bmp_with_alpha, sixteen_bit_rgb_png, two_bit_grey_png

SIDE = 40
SQUARE = (12, 12, 28, 28)  # left, top, right, bottom: far enough inside that Lanczos keeps corners and centre pure
COLOUR, GREY = (200, 30, 60), (150, 150, 150)
WHITE = (255, 255, 255)


# --------------------------------------------------------------------------------------------- helpers


def picture(mode: str, background, square) -> Image.Image:
    """The test picture in `mode`: `background` everywhere, `square` in SQUARE."""
    image = Image.new(mode, (SIDE, SIDE), background)
    image.paste(square, SQUARE)
    return image


def reference(colour) -> np.ndarray:
    """What every kind must convert to: the RGBA picture, transparent black around an opaque `colour` square."""
    return convert_image(encode(picture("RGBA", (0, 0, 0, 0), (*colour, 255)), "PNG"), 32).pixels


def encode(image: Image.Image, format_: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_, **options)
    return buffer.getvalue()


def square_mask() -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    left, top, right, bottom = SQUARE
    mask[top:bottom, left:right] = True
    return mask


def assert_background_white_and_square(pixels: np.ndarray, colour, tolerance: int = 0) -> None:
    corners = np.concatenate([pixels[:4, :4], pixels[:4, -4:], pixels[-4:, :4], pixels[-4:, -4:]])
    assert np.abs(corners.astype(int) - WHITE).max() <= tolerance, "the transparent background is not white"
    centre = pixels[13:19, 13:19]
    assert np.abs(centre.astype(int) - colour).max() <= tolerance, "the opaque square lost its colour"


def assert_same_as(pixels: np.ndarray, expected: np.ndarray, tolerance: int = 1) -> None:
    difference = np.abs(pixels.astype(int) - expected.astype(int)).max()
    assert difference <= tolerance, f"differs from the RGBA picture by {difference} levels"


# ------------------------------------------------------------------------------------------------ files


def palette_picture(transparency: int | bytes) -> bytes:
    """Palette: index 0 black (transparent), 1 the square's colour, 2 half-transparent grey (unused)."""
    image = picture("P", 0, 1)
    image.putpalette([0, 0, 0, *COLOUR, 128, 128, 128])
    return encode(image, "PNG", transparency=transparency)


def sixteen_bit_grey_picture() -> bytes:
    values = np.zeros((SIDE, SIDE), np.uint16)
    values[SQUARE[1] : SQUARE[3], SQUARE[0] : SQUARE[2]] = 150 * 257  # 150 in 16 bits
    return encode(Image.fromarray(values), "PNG", transparency=0)


def sixteen_bit_rgb_values() -> np.ndarray:
    values = np.empty((SIDE, SIDE, 3), np.uint16)
    values[:] = (0x1234, 0x5678, 0x9ABC)
    values[square_mask()] = [value * 257 for value in COLOUR]
    return values


FILES = {  # kind → (the file's bytes, the mode Pillow opens it in, the square's colour)
    "RGBA PNG": (lambda: encode(picture("RGBA", (0, 0, 0, 0), (*COLOUR, 255)), "PNG"), "RGBA", COLOUR),
    "RGBA WebP": (
        lambda: encode(picture("RGBA", (0, 0, 0, 0), (*COLOUR, 255)), "WEBP", lossless=True),
        "RGBA",
        COLOUR,
    ),
    "RGBA BMP": (lambda: bmp_with_alpha(picture("RGBA", (0, 0, 0, 0), (*COLOUR, 255))), "RGBA", COLOUR),
    "LA PNG": (lambda: encode(picture("LA", (0, 0), (150, 255)), "PNG"), "LA", GREY),
    "palette tRNS index": (lambda: palette_picture(0), "P", COLOUR),
    "palette tRNS bytes": (lambda: palette_picture(bytes([0, 255, 128])), "P", COLOUR),
    "RGB colour key": (lambda: encode(picture("RGB", (0, 0, 0), COLOUR), "PNG", transparency=(0, 0, 0)), "RGB", COLOUR),
    "L colour key": (lambda: encode(picture("L", 0, 150), "PNG", transparency=0), "L", GREY),
    "2-bit grey colour key": (  # key 1 of 0..3 must match the pixels decoded as 85
        lambda: two_bit_grey_png(np.where(square_mask(), 2, 1).astype(np.uint8), transparent=1),
        "L",
        (170, 170, 170),
    ),
    "16-bit grey colour key": (sixteen_bit_grey_picture, "I;16", GREY),
    "16-bit RGB colour key": (  # a 16-bit key must match the pixels decoded to 8 bits
        lambda: sixteen_bit_rgb_png(sixteen_bit_rgb_values(), transparent=(0x1234, 0x5678, 0x9ABC)),
        "RGB",
        COLOUR,
    ),
    "1-bit colour key": (lambda: encode(picture("1", 0, 1), "PNG", transparency=0), "1", WHITE),
}


# -------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", FILES)
def test_every_kind_of_transparency_in_a_file_is_composited_on_white(kind):
    make, mode, colour = FILES[kind]
    data = make()
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == mode  # the file really is of this kind
        assert opened.has_transparency_data
    pixels = convert_image(data, 32).pixels
    assert_background_white_and_square(pixels, colour)
    assert_same_as(pixels, reference(colour))


def test_palette_transparency_given_as_alpha_bytes_is_read_as_bytes():
    with Image.open(io.BytesIO(palette_picture(bytes([0, 255, 128])))) as opened:
        assert isinstance(opened.info["transparency"], bytes)  # not reduced to a single transparent index


def test_colour_key_matches_only_the_key_colour():
    """A key of (0, 0, 0) makes pure black transparent, and nothing else: near-black stays near-black."""
    image = picture("RGB", (0, 0, 0), (1, 0, 0))
    pixels = convert_image(encode(image, "PNG", transparency=(0, 0, 0)), 32).pixels
    assert_background_white_and_square(pixels, (1, 0, 0))


def test_lossy_webp_with_alpha_is_composited_on_white():
    data = encode(picture("RGBA", (0, 0, 0, 0), (*COLOUR, 255)), "WEBP", quality=90)
    pixels = convert_image(data, 32).pixels
    assert_background_white_and_square(pixels, COLOUR, tolerance=8)  # lossy colours, lossless alpha


def in_memory(mode: str, rgba: Image.Image) -> Image.Image:
    """`rgba` in an alpha mode no supported file opens in (Pillow's RGBA → La drops the alpha: go through LA)."""
    if mode == "PA":
        image = Image.merge("PA", (picture("P", 0, 1), rgba.getchannel("A")))
        image.putpalette([0, 0, 0, *GREY])
        return image
    return rgba.convert({"La": "LA", "RGBa": "RGBA"}[mode]).convert(mode)


def full_size(image: Image.Image) -> Image.Image:
    """The decoder's composition on white, at full size (as it is applied to the 32×32 result)."""
    return on_white(resizable(image))


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa"])
def test_in_memory_alpha_modes_are_composited_on_white(mode):
    """Modes Pillow can hand over though no supported file opens in them: the same rule applies."""
    rgba = picture("RGBA", (0, 0, 0, 0), (*GREY, 255))
    image = in_memory(mode, rgba)
    assert image.mode == mode
    assert np.asarray(image.getchannel(image.mode[-1]))[0, 0] == 0  # the background really is transparent
    assert_same_as(np.asarray(full_size(image)), np.asarray(full_size(rgba)))
    assert np.asarray(full_size(image))[0, 0].tolist() == list(WHITE)


def test_palette_with_alpha_entries_is_composited_on_white():
    image = picture("P", 0, 1)
    image.putpalette([0, 0, 0, 0, *COLOUR, 255], "RGBA")  # the alpha lives in the palette itself
    rgba = picture("RGBA", (0, 0, 0, 0), (*COLOUR, 255))
    assert_same_as(np.asarray(full_size(image)), np.asarray(full_size(rgba)))
