"""Training recipes: each preset's hyper-parameters beyond epochs, batch size and learning rate.
Plain dataclasses (no TensorFlow), so the registry and the command line stay fast to import."""

from __future__ import annotations

from dataclasses import dataclass

FAST_WIDTHS = (64, 256, 256)
QUICK_WIDTHS = (32, 64, 128)


@dataclass(frozen=True)
class KerasFitRecipe:
    """`model.fit` with a stock Keras optimizer and categorical cross-entropy (the classic notebook)."""

    optimizer: str = "rmsprop"  # a name `cifarflow.training.keras_fit.make_optimizer` knows


@dataclass(frozen=True)
class AirbenchRecipe:
    """airbench94_muon (Keller Jordan): conv kernels by Muon, whitening bias, BatchNorm biases and head by
    Nesterov SGD; every lr decays linearly to zero. The Muon lr of the conv kernels is the preset's
    `learning_rate`; the SGD rates are below (per summed-loss step, as airbench)."""

    widths: tuple[int, int, int] = FAST_WIDTHS
    momentum: float = 0.85  # Nesterov SGD's
    weight_decay: float = 2e-6  # per example, coupled (L2), as torch SGD
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3  # the whitening bias trains for the first epochs only
    whiten_eps: float = 5e-4  # added to the patch covariance's eigenvalues: caps the whitening gain
    translate: int = 2  # pixels of random reflect-padded translation
    bn_momentum: float = 0.6
    scaling_factor: float | None = None  # logits × this; None: 1 / the last width
    head_unit_std: bool = True  # head init rescaled to unit std
    micro_batch: int = 1000  # a step sums the gradients of micro-batches this large: its memory bound
    muon_momentum: float = 0.6
    bias_lr: float = 0.053
    head_lr: float = 0.67
