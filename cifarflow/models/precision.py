"""Numeric precision and CPU threads for training and prediction."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import keras
import tensorflow as tf


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether `cpuinfo`'s flags name avx512_bf16 or amx_bf16 (False when it cannot be read)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def choose_policy(mixed_precision: bool | None = None) -> str:
    """'mixed_bfloat16' or 'float32': the argument, else CIFAR_MIXED_PRECISION=0|1, else `cpu_has_bf16()`."""
    if mixed_precision is None:
        env = os.environ.get("CIFAR_MIXED_PRECISION", "").strip().lower()
        mixed_precision = env in ("1", "true", "yes", "on") or (
            env not in ("0", "false", "no", "off") and cpu_has_bf16()
        )
    return "mixed_bfloat16" if mixed_precision else "float32"


@contextmanager
def dtype_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def configure_threads() -> None:
    """Intra-op threads: the cores we may use; inter-op 2, so tf.data and the step overlap. A no-op once TF runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, cores))
    except RuntimeError:
        pass
