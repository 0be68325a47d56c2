"""The airbench presets (`fast`, `quick`): architecture, augmentation, one-step training, TTA, saving.

Nothing here trains to the target accuracy; see benchmarks/bench_models.py for the real runs.
"""

from __future__ import annotations

from dataclasses import replace

import keras  # required dependencies (pyproject.toml): a missing one is a broken install, not a skip
import numpy as np
import pytest
import tensorflow as tf

from cifarflow.data.transform import Normalization
from cifarflow.models import airbench, precision, scoring
from cifarflow.models.presets import PRESETS, AirbenchRecipe, get_preset
from cifarflow.training import airbench_loop, augment, muon
from cifarflow.training.callbacks import AtomicBackupAndRestore, WarmStart
from cifarflow.training.run import TrainSettings
from tests.synthetic import write_features

CIFAR = Normalization("standardize", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR_SHAPE = {"num_classes": 10, "image_size": 32}  # the default data set's
AIRBENCH_PRESETS = [
    name for name, preset in PRESETS.items() if preset.builder == "cifarflow.models.airbench:make_airbench_net"
]


def expected_params(widths, channels=3, classes=10) -> int:
    """Every weight of the network, BatchNorm moving statistics included (what count_params counts)."""
    whiten = 2 * 2 * channels * (2 * 4 * channels) + 2 * 4 * channels
    total, cin = whiten, 2 * 4 * channels
    for width in widths:
        total += 9 * cin * width + 3 * width + 9 * width * width + 3 * width  # conv, BN (β, μ, σ²) ×2
        cin = width
    return total + cin * classes


@pytest.mark.parametrize("name", AIRBENCH_PRESETS)
def test_model_shapes_and_parameter_counts(name):
    preset = get_preset(name)
    widths, params = preset.recipe.widths, preset.params  # the declared size, checked against the formula
    model = preset.build(CIFAR, **CIFAR_SHAPE)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 10)
    assert model.count_params() == params == expected_params(widths)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == params - 288 - 4 * sum(widths)  # less the frozen whitening kernel and BN statistics
    assert model.get_layer("whiten").kernel.trainable is False
    out = model(np.zeros((2, 32, 32, 3), np.uint8))
    assert out.shape == (2, 10) and out.dtype == "float32"


def test_conv_init_is_identity_on_the_first_filters():
    model = airbench.make_airbench_net(CIFAR, **CIFAR_SHAPE, seed=1)
    kernel = model.get_layer("block2_conv1").kernel.numpy()  # (3, 3, 64, 256)
    np.testing.assert_array_equal(kernel[:, :, :, :64].sum(axis=(0, 1)), np.eye(64))
    assert np.abs(kernel[:, :, :, 64:]).max() <= 1 / np.sqrt(9 * 64)


def test_whitening_kernel_whitens_patches():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(3, 3))
    images = rng.normal(size=(200, 8, 8, 3)) @ mix  # correlated channels
    kernel = airbench.whitening_kernel(images, 2, eps=0.0)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
    patches = np.stack([images[:, i : 7 + i, j : 7 + j, :] for i in range(2) for j in range(2)], axis=3)
    flat = patches.reshape(-1, 12)
    projected = flat @ kernel[..., :12].reshape(12, 12)
    np.testing.assert_allclose(projected.T @ projected / len(flat), np.eye(12), atol=1e-6)


def test_flip_and_translate_keeps_shapes_dtype_and_image_identity():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    out = augment.flip_and_translate(tf.constant(images), seed=[3, 4], pad=2).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    for i in range(len(images)):  # every output is a flip/crop of its *own* image: labels stay aligned
        candidates = [
            view
            for r in range(5)
            for c in range(5)
            for view in (padded[i, r : r + 32, c : c + 32], padded[i, r : r + 32, c : c + 32][:, ::-1])
        ]
        assert any(np.array_equal(out[i], view) for view in candidates)


def test_augmentation_is_deterministic_under_a_seed():
    images = tf.constant(np.random.default_rng(1).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    a = augment.flip_and_translate(images, seed=[7, 0]).numpy()
    b = augment.flip_and_translate(images, seed=[7, 0]).numpy()
    c = augment.flip_and_translate(images, seed=[7, 1]).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_translate_and_alternating_flip():
    images = tf.constant(np.arange(2 * 4 * 4).reshape(2, 4, 4, 1))
    shifted = augment.translate(images, tf.constant([[0, 0], [1, -1]]), pad=1).numpy()
    np.testing.assert_array_equal(shifted[0], images[0].numpy())
    expected = np.pad(images[1].numpy(), [(1, 1), (1, 1), (0, 0)], mode="reflect")[2:6, 0:4]
    np.testing.assert_array_equal(shifted[1], expected)
    base = tf.constant([True, False, True])
    np.testing.assert_array_equal(augment.alternating_flip_mask(base, 0).numpy(), [True, False, True])
    np.testing.assert_array_equal(augment.alternating_flip_mask(base, 1).numpy(), [False, True, False])
    np.testing.assert_array_equal(augment.alternating_flip_mask(base, 4).numpy(), [True, False, True])


def test_linear_decay_schedule():
    decay = airbench_loop.linear_decay(tf.constant([0, 25, 100, 120]), 100).numpy()
    np.testing.assert_allclose(decay, [1.0, 0.75, 0.0, 0.0], atol=1e-6)


def test_newton_schulz_orthogonalizes_a_kernel_gradient():
    """The update keeps the gradient's singular vectors and flattens its singular values to ≈ 1 (airbench's
    three quintic steps land in about [0.5, 1.5]), for a conv kernel seen as an (out, kh·kw·in) matrix."""
    rng = np.random.default_rng(0)
    for shape in ((3, 3, 16, 64), (3, 3, 64, 16)):  # wide and tall matrices
        gradient = rng.normal(size=shape) * np.geomspace(0.1, 1.0, shape[-1])  # ill-conditioned
        update = muon.orthogonal_update(tf.constant(gradient, tf.float32)).numpy()
        assert update.shape == shape
        matrix = gradient.reshape(-1, shape[-1]).T
        u, _, vt = np.linalg.svd(matrix, full_matrices=False)
        singular = np.linalg.svd(update.reshape(-1, shape[-1]).T, compute_uv=False)
        assert 0.3 < singular.min() and singular.max() < 1.6
        polar = (u @ vt).ravel()
        cosine = polar @ update.reshape(-1, shape[-1]).T.ravel() / np.linalg.norm(polar) / np.linalg.norm(update)
        assert cosine > 0.9


def test_muon_step_renormalizes_the_kernel_and_steps_against_the_gradient():
    rng = np.random.default_rng(1)
    kernel = tf.Variable(rng.normal(size=(3, 3, 8, 32)).astype(np.float32))
    buffer = tf.Variable(tf.zeros_like(kernel))
    gradient = tf.constant(rng.normal(size=(3, 3, 8, 32)).astype(np.float32))
    muon.muon_step(kernel, buffer, gradient, lr=0.0, momentum=0.6)
    assert float(tf.norm(kernel)) == pytest.approx(np.sqrt(32), rel=1e-5)  # √out, so steps are relative
    np.testing.assert_allclose(buffer.numpy(), gradient.numpy())
    before = kernel.numpy()
    muon.muon_step(kernel, buffer, gradient, lr=0.1, momentum=0.6)
    np.testing.assert_allclose(buffer.numpy(), 1.6 * gradient.numpy(), rtol=1e-6)
    moved = kernel.numpy() - before * np.sqrt(32) / np.linalg.norm(before)
    assert float(np.sum(moved * gradient.numpy())) < 0  # a descent direction
    expected = -0.1 * muon.orthogonal_update(gradient * 2.56).numpy()  # nesterov: g + 0.6 · 1.6 g
    np.testing.assert_allclose(moved, expected, atol=1e-5)


def _reference_model() -> keras.Model:
    """A known function of the pixels (a fixed random linear map), so TTA can be checked by hand."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(seed=0))(x)
    return keras.Model(inputs, outputs)


def test_tta_averages_the_flipped_and_translated_views(tmp_path):
    model = _reference_model()
    pixels = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    f = lambda x: model(x).numpy().astype(np.float64)  # noqa: E731
    padded = np.pad(pixels, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    views = [pixels, padded[:, 0:32, 0:32], padded[:, 2:34, 2:34]]  # airbench: as is, shifted ±1 px
    mirrored = [(f(v) + f(v[:, :, ::-1])) / 2 for v in views]
    expected = 0.5 * mirrored[0] + 0.25 * mirrored[1] + 0.25 * mirrored[2]

    def averaged(level: int) -> np.ndarray:  # the views' outputs averaged, without the softmax
        return scoring.predict_in_batches(scoring.serve_tta(model, outputs="probabilities", level=level), pixels, 2)

    # float32 sums in another order: relative tolerance, plus an absolute one for logits near zero
    np.testing.assert_allclose(averaged(2), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged(1), mirrored[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged(0), f(pixels), rtol=1e-5, atol=1e-6)
    assert sum(w for w, *_ in augment.tta_views(level=2)) == pytest.approx(1.0)

    probabilities = scoring.predict_in_batches(scoring.serve_tta(model, outputs="logits"), pixels, batch_size=2)
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, scoring.softmax(expected), rtol=1e-5, atol=1e-7)


def _settings(model: str, epochs: int, batch_size: int) -> TrainSettings:
    return TrainSettings(model, epochs, batch_size, get_preset(model).learning_rate, seed=0)


def _batch_loss(net, pixels, labels) -> float:
    logits = net(pixels, training=True)
    return float(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy().mean())


@pytest.mark.parametrize("model", AIRBENCH_PRESETS)
def test_training_steps_lower_the_loss_on_a_tiny_batch(model):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64).astype(np.int32)
    steps = 6 if model == "quick" else 3
    # micro-batches of 32: each step sums the gradients of two halves, as the 1000-image batches may
    recipe = replace(get_preset(model).recipe, translate=0, micro_batch_pixels=32 * 32**2)
    with precision.dtype_policy("float32"):
        settings = _settings(model, steps, 64)
        trainer, dataset = airbench_loop.make_trainer(settings, pixels, labels, CIFAR, recipe, num_classes=10)
        assert trainer.micro_batches == 2
        assert len(trainer.muon_kernels) == 6
        before = _batch_loss(trainer.net, pixels, labels)
        history = trainer.fit(dataset, epochs=steps, verbose=0, shuffle=False)
        after = _batch_loss(trainer.net, pixels, labels)
    assert int(trainer.optimizer.iterations.numpy()) == steps
    assert np.isfinite(history.history["loss"]).all()
    assert after < before


def test_fit_trains_in_bfloat16_returns_float32_restores_policy_and_saved_model_loads(tmp_path):
    rng = np.random.default_rng(0)
    write_features(tmp_path, rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64), CIFAR)
    test_pixels = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    epochs_seen, trained_in = [], set()

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)
            trained_in.add(self.model.net.get_layer("block1_conv1").dtype_policy.name)

    policy = keras.config.dtype_policy().name
    with_small_widths = replace(get_preset("quick").recipe, widths=(8, 16, 16))
    net = airbench_loop.fit_arrays(
        _settings("quick", 2, 32),
        np.load(tmp_path / "pixels_train.npy"),
        np.load(tmp_path / "labels_train.npy").astype(np.int32),
        CIFAR,
        [Recorder()],
        num_classes=10,
        mixed_precision=True,
        recipe=with_small_widths,
    )
    assert keras.config.dtype_policy().name == policy
    assert trained_in == {"mixed_bfloat16"}  # trained in bfloat16, returned to be scored and served in float32
    assert {layer.dtype_policy.name for layer in net.layers} == {"float32"}
    assert epochs_seen == [0, 1]
    net.save(tmp_path / "model.keras")
    quick = get_preset("quick")
    loaded = quick.load(tmp_path / "model.keras")
    np.testing.assert_allclose(quick.predict(loaded, test_pixels), quick.predict(net, test_pixels), atol=1e-6)
    assert loaded.get_layer("normalize").dtype_policy.name == "float32"  # the fitted transform travels with it


def test_warm_start_loads_the_champion_with_its_presets_loader(tmp_path):
    quick = get_preset("quick")
    small = replace(quick.recipe, widths=(8, 8, 8))
    champion = quick.build(CIFAR, small, **CIFAR_SHAPE, seed=1)
    champion.save(tmp_path / "model.keras")
    net = quick.build(CIFAR, small, **CIFAR_SHAPE, seed=2)
    warm = WarmStart(str(tmp_path / "model.keras"), quick)
    warm.set_model(net)
    warm.on_train_begin()
    assert warm.applied, warm.reason
    for ours, theirs in zip(net.get_weights(), champion.get_weights()):
        np.testing.assert_array_equal(ours, theirs)


def test_precision_choice(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert precision.cpu_has_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert not precision.cpu_has_bf16(cpuinfo)
    assert not precision.cpu_has_bf16(tmp_path / "missing")
    monkeypatch.setenv("CIFAR_MIXED_PRECISION", "0")
    assert precision.choose_policy() == "float32"
    monkeypatch.setenv("CIFAR_MIXED_PRECISION", "1")
    assert precision.choose_policy() == "mixed_bfloat16"
    assert precision.choose_policy(False) == "float32"
    before = keras.config.dtype_policy().name
    with precision.dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before


def test_resumed_training_matches_an_unbroken_run(tmp_path):
    """Shuffle order and augmentation are keyed on (seed, epoch/step), and the checkpoint holds the
    optimizer state and Muon buffers: a run killed after an epoch and resumed from the production
    `AtomicBackupAndRestore` checkpoint ends with exactly the weights of an unbroken run."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 96).astype(np.int32)
    recipe = replace(AirbenchRecipe(), widths=(8, 8, 16), whiten_bias_epochs=2, micro_batch_pixels=16 * 32**2)
    settings = _settings("quick", 3, 32)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def fit(callbacks):
        keras.utils.set_random_seed(0)
        return airbench_loop.fit_arrays(
            settings, pixels, labels, CIFAR, callbacks, num_classes=10, recipe=recipe, mixed_precision=False
        )

    unbroken = fit([])
    with pytest.raises(KeyboardInterrupt):
        fit([AtomicBackupAndRestore(str(tmp_path / "backup")), Kill()])
    assert (tmp_path / "backup" / "checkpoint.json").is_file()
    resumed = fit([AtomicBackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(unbroken.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_every_preset_is_one_complete_registry_entry():
    from cifarflow.models.presets import resolve

    for name, preset in PRESETS.items():
        for reference in (preset.builder, preset.trainer, preset.serving):
            assert callable(resolve(reference)), f"{name}: {reference}"
        assert preset.build(CIFAR, **CIFAR_SHAPE).count_params() == preset.params, name


def test_the_last_pool_takes_the_whole_map_so_32_px_keeps_airbenchs_graph_and_64_px_reaches_1x1():
    quick = get_preset("quick")
    at_32 = quick.build(CIFAR, **CIFAR_SHAPE, seed=0)
    at_64 = quick.build(CIFAR, num_classes=10, image_size=64, seed=0)
    assert at_32.get_layer("pool").pool_size == (3, 3)  # airbench's MaxPool(3) of its 3×3 map
    assert at_64.get_layer("pool").pool_size == (7, 7)
    for net in (at_32, at_64):
        assert net.get_layer("pool").output.shape[1:3] == (1, 1)
    assert [layer.name for layer in at_32.layers] == [layer.name for layer in at_64.layers]
    assert [w.shape for w in at_32.get_weights()] == [w.shape for w in at_64.get_weights()]


def test_quick_trains_an_epoch_on_3_classes_at_64_px_in_pixel_bounded_micro_batches(tmp_path):
    rng = np.random.default_rng(0)
    names = ["ant", "bee", "wasp"]
    write_features(
        tmp_path,
        rng.integers(0, 256, (48, 64, 64, 3), dtype=np.uint8),
        rng.integers(0, 3, 48),
        CIFAR,
        label_names=names,
    )
    settings = _settings("quick", 1, 24)
    recipe = replace(get_preset("quick").recipe, micro_batch_pixels=12 * 64**2)
    pixels, labels = np.load(tmp_path / "pixels_train.npy"), np.load(tmp_path / "labels_train.npy").astype(np.int32)
    trainer, _ = airbench_loop.make_trainer(settings, pixels, labels, CIFAR, recipe, num_classes=3)
    assert trainer.micro_batches == 2  # 12 images of 64 px a micro-batch: the same pixels as 48 of 32 px
    net = airbench_loop.fit_airbench(settings, tmp_path, [], verbose=0)
    assert net.input_shape == (None, 64, 64, 3) and net.output_shape == (None, 3)
    probabilities = get_preset("quick").predict(net, rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8))
    assert probabilities.shape == (5, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
