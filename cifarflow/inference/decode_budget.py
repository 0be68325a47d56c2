"""A memory bound for decoding uploads (a 208 KB PNG of 7,000 × 7,000 RGBA needs 376 MB while it decodes): at most
max(budget, largest image) pixels decode at once over all requests; an image over the whole budget decodes alone."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cifarflow.intake.images import open_checked

DEFAULT_PIXELS = 50_000_000  # one largest accepted image (MAX_PIXELS) at a time: see docs/benchmarks/large-images.md
WAIT_S = 10.0  # a 49 MP RGBA PNG decodes in about 2 s on 2 cores: a few such ahead of a request still fit
RETRY_AFTER_S = 2  # what a refused request is told to wait before trying again
MMAP_THRESHOLD_BYTES = 2**20  # allocations this large or larger are unmapped when freed (return_freed_memory)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


class DecodeBusy(Exception):
    """The budget stayed spent for the whole wait; `retry_after_s` says when to try again (seconds)."""

    retry_after_s = RETRY_AFTER_S

    def __init__(self, pixels: int, budget: int, wait_s: float):
        super().__init__(
            f"the service is busy decoding other large images ({pixels / 1e6:.1f} MP asked, "
            f"{budget / 1e6:.1f} MP budget, waited {wait_s:g} s); try again in {RETRY_AFTER_S} s"
        )


class DecodeBudget:
    """Pixels being decoded at once, at most `pixels` (> 0); a request goes ahead as soon as its share fits
    (small images do not wait behind a big one), else DecodeBusy after `wait_s` seconds. Thread-safe."""

    def __init__(self, pixels: int = DEFAULT_PIXELS, wait_s: float = WAIT_S):
        if pixels < 1:
            raise ValueError(f"a decode budget needs at least 1 pixel, got {pixels}")
        self.pixels, self.wait_s = pixels, wait_s
        self.in_use = 0  # pixels held now
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[int]:
        """`acquire(pixels)` for the `with` block; yields the pixels held."""
        held = self.acquire(pixels)
        try:
            yield held
        finally:
            self.release(held)

    def acquire(self, pixels: int) -> int:
        """Take `pixels` (at most the budget) once they fit: the share, for `release`; DecodeBusy after `wait_s`."""
        share = min(max(pixels, 0), self.pixels)
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_use + share <= self.pixels, timeout=self.wait_s):
                raise DecodeBusy(pixels, self.pixels, self.wait_s)
            self.in_use += share
        return share

    def release(self, share: int) -> None:
        """Give back what `acquire` returned."""
        with self._changed:
            self.in_use -= share
            self._changed.notify_all()


def header_pixels(data: bytes) -> int:
    """Width × height of the image in `data` from its header alone; ImageRejected as `convert_image` would raise."""
    with open_checked(data) as image:
        return image.width * image.height


def return_freed_memory(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc's malloc mmap every allocation of `threshold_bytes` or more, so it is returned when freed (eight
    big decodes in eight threads kept 4.7 GB in arenas without it); False, nothing changed, without `mallopt`."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, threshold_bytes))
