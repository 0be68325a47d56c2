"""Numeric precision and CPU threads for training and prediction.

Mixed precision: `mixed_bfloat16` when the CPU has native bf16 (avx512_bf16 / amx_bf16), else float32;
`CIFAR_MIXED_PRECISION=0|1` or the `mixed_precision` argument overrides. The global Keras dtype policy
is restored afterwards.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import keras
import tensorflow as tf


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def choose_policy(mixed_precision: bool | None = None) -> str:
    """'mixed_bfloat16' or 'float32': the argument if given, else CIFAR_MIXED_PRECISION, else auto."""
    if mixed_precision is None:
        env = os.environ.get("CIFAR_MIXED_PRECISION", "").strip().lower()
        if env in ("0", "false", "no", "off"):
            mixed_precision = False
        elif env in ("1", "true", "yes", "on"):
            mixed_precision = True
        else:
            mixed_precision = cpu_has_bf16()
    return "mixed_bfloat16" if mixed_precision else "float32"


@contextmanager
def dtype_policy(name: str):
    """Set the global Keras dtype policy for the block, then restore the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def configure_threads() -> None:
    """One intra-op pool as wide as the cores we may use; inter-op 2 so tf.data and the step overlap.
    Only possible before TF's runtime starts; later calls are no-ops."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, cores))
    except RuntimeError:
        pass
