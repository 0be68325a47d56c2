"""The airbench presets (`fast`, `quick`): architecture, augmentation, one-step training, TTA, saving.

Nothing here trains to the target accuracy; see benchmarks/bench_models.py for the real runs.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cifarflow.models.registry import get_preset  # noqa: E402
from cifarflow.training.run import TrainSettings  # noqa: E402
from tasks import airbench, airbench_train, augment, muon  # noqa: E402


def expected_params(widths, channels=3, classes=10) -> int:
    """Every weight of the network, BatchNorm moving statistics included (what count_params counts)."""
    whiten = 2 * 2 * channels * (2 * 4 * channels) + 2 * 4 * channels
    total, cin = whiten, 2 * 4 * channels
    for width in widths:
        total += 9 * cin * width + 3 * width + 9 * width * width + 3 * width  # conv, BN (β, μ, σ²) ×2
        cin = width
    return total + cin * classes


@pytest.mark.parametrize(
    ("builder", "widths", "params"),
    [(airbench.make_fast_model, (64, 256, 256), 1_973_944), (airbench.make_quick_model, (32, 64, 128), 295_544)],
)
def test_model_shapes_and_parameter_counts(builder, widths, params):
    model = builder()
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 10)
    assert model.count_params() == params == expected_params(widths)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == params - 288 - 4 * sum(widths)  # less the frozen whitening kernel and BN statistics
    assert model.get_layer("whiten").kernel.trainable is False
    out = model(np.zeros((2, 32, 32, 3), np.uint8))
    assert out.shape == (2, 10) and out.dtype == "float32"


def test_conv_init_is_identity_on_the_first_filters():
    model = airbench.make_fast_model(seed=1)
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


def test_schedules():
    steps = tf.constant([0, 23, 100], tf.int64)
    triangle = airbench_train.triangle(steps, 100, 0.2, 0.23, 0.07).numpy()
    np.testing.assert_allclose(triangle, [0.2, 1.0, 0.07], atol=1e-6)
    decay = airbench_train.linear_decay(tf.constant([0, 25, 100, 120]), 100).numpy()
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
    np.testing.assert_allclose(airbench.tta_logits(model, pixels, level=2, batch_size=2), expected, rtol=1e-5)
    np.testing.assert_allclose(airbench.tta_logits(model, pixels, level=1), mirrored[0], rtol=1e-5)
    np.testing.assert_allclose(airbench.tta_logits(model, pixels, level=0), f(pixels), rtol=1e-5)
    assert sum(w for w, *_ in augment.tta_views(level=2)) == pytest.approx(1.0)

    np.save(tmp_path / "pixels_test.npy", pixels)
    probabilities = airbench.predict_airbench(model, tmp_path)
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities, airbench.softmax(expected), rtol=1e-5)


def _settings(model: str, epochs: int, batch_size: int) -> TrainSettings:
    preset = get_preset(model)
    return TrainSettings(
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=preset.learning_rate,
        optimizer=preset.optimizer,
        seed=0,
        trainer=preset.trainer,
    )


def _batch_loss(net, pixels, labels) -> float:
    logits = net(pixels, training=True)
    return float(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy().mean())


@pytest.mark.parametrize(
    ("model", "recipe"),
    [("quick", "muon"), ("fast", "muon"), ("fast", "sgd")],
)
def test_training_steps_lower_the_loss_on_a_tiny_batch(model, recipe):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64).astype(np.int32)
    steps = 6 if model == "quick" else 3
    base = airbench_train.hyper_for(_settings(model, 1, 64)) if recipe == "muon" else airbench_train.AIRBENCH94_SGD
    # micro-batches of 32: each step sums the gradients of two halves, as the 2000-image batches do
    hyper = airbench_train.replace(base, translate=0, micro_batch=32)
    settings = airbench_train.replace(_settings(model, steps, 64), learning_rate=hyper.lr)
    with airbench.dtype_policy("float32"):
        trainer, dataset = airbench_train.make_trainer(settings, pixels, labels, hyper)
        assert trainer.micro_batches == 2
        assert len(trainer.muon_kernels) == (6 if recipe == "muon" else 0)
        before = _batch_loss(trainer.net, pixels, labels)
        history = trainer.fit(dataset, epochs=steps, verbose=0, shuffle=False)
        after = _batch_loss(trainer.net, pixels, labels)
    assert int(trainer.optimizer.iterations.numpy()) == steps
    assert np.isfinite(history.history["loss"]).all()
    assert after < before


def test_fit_restores_policy_runs_callbacks_and_saved_model_loads(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pixels_train.npy", rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "labels_train.npy", rng.integers(0, 10, 64).astype(np.uint8))
    np.save(tmp_path / "pixels_test.npy", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    hyper = airbench_train.Hyper(widths=(8, 16, 16))
    epochs_seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs_seen.append(epoch)

    policy = keras.config.dtype_policy().name
    net = airbench_train.fit_airbench(
        _settings("quick", 2, 32), tmp_path, [Recorder()], verbose=0, mixed_precision=True, hyper=hyper
    )
    assert keras.config.dtype_policy().name == policy
    assert net.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    assert net.get_layer("whiten").dtype_policy.name == "float32"  # the stem stays float32
    assert epochs_seen == [0, 1]
    net.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        airbench.predict_airbench(loaded, tmp_path), airbench.predict_airbench(net, tmp_path), atol=1e-6
    )


def test_precision_choice(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert airbench.cpu_has_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert not airbench.cpu_has_bf16(cpuinfo)
    assert not airbench.cpu_has_bf16(tmp_path / "missing")
    monkeypatch.setenv("CIFAR_MIXED_PRECISION", "0")
    assert airbench.choose_policy() == "float32"
    monkeypatch.setenv("CIFAR_MIXED_PRECISION", "1")
    assert airbench.choose_policy() == "mixed_bfloat16"
    assert airbench.choose_policy(False) == "float32"
    before = keras.config.dtype_policy().name
    with airbench.dtype_policy("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before


@pytest.mark.parametrize("recipe", ["muon", "sgd"])
def test_resumed_training_matches_an_unbroken_run(tmp_path, recipe):
    """Shuffle order and augmentation are keyed on (seed, epoch/step), and the checkpoint holds the
    optimizer state, Muon buffers and EMA: a run killed after an epoch and resumed from its
    BackupAndRestore checkpoint ends with exactly the weights of an unbroken run."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pixels_train.npy", rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "labels_train.npy", rng.integers(0, 10, 96).astype(np.uint8))
    base = airbench_train.Hyper() if recipe == "muon" else airbench_train.AIRBENCH94_SGD
    hyper = airbench_train.replace(
        base, widths=(8, 8, 16), ema_start_epochs=1, whiten_bias_epochs=2, ema_every=2, micro_batch=16
    )
    settings = airbench_train.replace(_settings("quick", 3, 32), learning_rate=hyper.lr)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    def fit(callbacks):
        keras.utils.set_random_seed(0)
        return airbench_train.fit_airbench(settings, tmp_path, callbacks, verbose=0, hyper=hyper, mixed_precision=False)

    def backup():
        return keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)

    unbroken = fit([])
    with pytest.raises(KeyboardInterrupt):
        fit([backup(), Kill()])
    resumed = fit([backup()])
    for a, b in zip(unbroken.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_presets_and_builders_are_registered():
    from cifarflow.models.seed import make_model

    for name, params in (("fast", 1_973_944), ("quick", 295_544)):
        preset = get_preset(name)
        assert preset.trainer == "airbench" and preset.optimizer == "muon"
        assert make_model(name).count_params() == params
