"""McNemar's test on paired per-image correctness: is one model more accurate than another on the same images?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["exact", "midp"]


@dataclass(frozen=True)
class McNemar:
    """The discordant images (`champion_only`: right for the champion alone; `challenger_only`: the other way
    round) and the two-sided p-value; under H0 (equal accuracy) each discordant image is a fair coin."""

    champion_only: int
    challenger_only: int
    p_value: float
    method: Method


def mcnemar_test(champion_correct: np.ndarray, challenger_correct: np.ndarray, method: Method = "exact") -> McNemar:
    """Two-sided exact (binomial) McNemar test or its mid-p variant (Fagerland, Lydersen and Laake 2013)."""
    from scipy.stats import binom

    champion_correct = np.asarray(champion_correct, dtype=bool)
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    if champion_correct.shape != challenger_correct.shape:
        raise ValueError(f"paired test needs equal shapes, got {champion_correct.shape} and {challenger_correct.shape}")
    b = int(np.sum(champion_correct & ~challenger_correct))
    c = int(np.sum(~champion_correct & challenger_correct))
    n, k = b + c, min(b, c)
    if n == 0:
        p = 1.0
    else:
        p = min(1.0, 2.0 * float(binom.cdf(k, n, 0.5)))
        if method == "midp":
            p = max(0.0, p - float(binom.pmf(k, n, 0.5)))
        elif method != "exact":
            raise ValueError(f"unknown McNemar method {method!r}; use 'exact' or 'midp'")
    return McNemar(b, c, p, method)


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
