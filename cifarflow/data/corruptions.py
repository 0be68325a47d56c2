"""Corruptions after CIFAR-10-C (Hendrycks & Dietterich, 2019): (N, H, W, 3) uint8 → the same, fixed by `seed`, at
any image size. Their parameters are per value or per pixel, as CIFAR-10-C's, which were calibrated at 32 px."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def _per_image(images: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    out = np.empty_like(images)
    for i, pixels in enumerate(images):
        out[i] = np.asarray(change(Image.fromarray(pixels)).convert("RGB"))
    return out


def brightness(images: np.ndarray, factor: float = 0.5, seed: int = 0) -> np.ndarray:
    return np.clip(np.rint(images.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def gaussian_noise(images: np.ndarray, sigma: float = 20.0, seed: int = 0) -> np.ndarray:
    """Normal noise of standard deviation `sigma` (0..255 units) on every value, clipped."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def jpeg(images: np.ndarray, quality: int = 10, seed: int = 0) -> np.ndarray:
    """Each image saved as JPEG at `quality` (1–95, Pillow's scale) and decoded again."""

    def compress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return _per_image(images, compress)


def blur(images: np.ndarray, radius: float = 1.0, seed: int = 0) -> np.ndarray:
    """Pillow's Gaussian blur of `radius` pixels (its standard deviation) on each image."""
    return _per_image(images, lambda image: image.filter(ImageFilter.GaussianBlur(radius)))


def grayscale(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pillow's ITU-R 601-2 luma, in 3 channels."""
    return _per_image(images, lambda image: image.convert("L"))


def contrast(images: np.ndarray, factor: float = 0.5, seed: int = 0) -> np.ndarray:
    """Pillow's `ImageEnhance.Contrast` at `factor`."""
    return _per_image(images, lambda image: ImageEnhance.Contrast(image).enhance(factor))


def pixelate(images: np.ndarray, scale: float = 0.5, seed: int = 0) -> np.ndarray:
    """Shrunk to `scale` and enlarged back, both with Pillow's box filter (as CIFAR-10-C)."""

    def coarsen(image: Image.Image) -> Image.Image:
        small = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.BOX)

    return _per_image(images, coarsen)


def upside_down(images: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.ascontiguousarray(images[:, ::-1, ::-1])


def swap_channels(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Red and blue swapped (BGR read as RGB: OpenCV's order taken for the usual one)."""
    return np.ascontiguousarray(images[..., ::-1])


@dataclass(frozen=True)
class Corruption:
    name: str
    severity: str  # the default severity, for tables
    apply: Callable[..., np.ndarray]  # (images, seed=…) → corrupted images, at the default severity


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("brightness", "×0.5", brightness),
        Corruption("gaussian_noise", "σ = 20", gaussian_noise),
        Corruption("jpeg", "quality 10", jpeg),
        Corruption("blur", "radius 1", blur),
        Corruption("grayscale", "ITU-R 601 luma", grayscale),
        Corruption("contrast", "×0.5", contrast),
        Corruption("pixelate", "½ size", pixelate),
        Corruption("upside_down", "180°", upside_down),
        Corruption("swap_channels", "BGR as RGB", swap_channels),
    )
}


def corrupt(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """`images` with the corruption `name` at its default severity; ValueError naming the known ones."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: one of {', '.join(CORRUPTIONS)}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return CORRUPTIONS[name].apply(images, seed=seed)
