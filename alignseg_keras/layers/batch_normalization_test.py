"""FusedBatchNormalization against Keras' own BatchNormalization (its unfused ops)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.layers.batch_normalization import FusedBatchNormalization

# float32 rounding of a normalisation over a few hundred values, and of its gradient.
ATOL = 2e-5


def pair(**kwargs):
    """A fused layer and Keras' layer with the same random weights and statistics."""
    rng = np.random.default_rng(0)
    fused = FusedBatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    plain = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    for layer in (fused, plain):
        layer.build((None, None, None, 5))
    weights = [rng.uniform(0.5, 2.0, w.shape).astype("float32") for w in plain.weights]
    for layer in (fused, plain):
        layer.set_weights(weights)
    return fused, plain


def inputs(shape=(2, 7, 6, 5), seed=1):
    return tf.constant(np.random.default_rng(seed).normal(2.0, 3.0, shape).astype("float32"))


def values_and_gradients(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        # A weighted sum, so that the gradient through the batch statistics is not zero.
        loss = tf.reduce_sum(y * tf.reshape(tf.range(tf.size(y), dtype=y.dtype), y.shape))
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return [y.numpy(), *(g.numpy() for g in grads)]


def uses_fused_kernel(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
    return any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


@pytest.mark.parametrize("training", [True, False])
def test_values_and_gradients_equal_keras(training):
    fused, plain = pair()
    x = inputs()
    for got, want in zip(values_and_gradients(fused, x, training), values_and_gradients(plain, x, training)):
        np.testing.assert_allclose(got, want, atol=ATOL * max(1.0, np.abs(want).max()))
    assert uses_fused_kernel(fused, x, training)


@pytest.mark.parametrize("shape", [(2, 7, 6, 5), (1, 1, 1, 5)])
def test_moving_statistics_equal_keras(shape):
    fused, plain = pair()
    for seed in range(3):
        x = inputs(shape, seed)
        fused(x, training=True)
        plain(x, training=True)
    for got, want in zip(fused.non_trainable_weights, plain.non_trainable_weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_layer_uses_moving_statistics_in_training():
    fused, plain = pair()
    fused.trainable = plain.trainable = False
    x = inputs()
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=ATOL * 10)
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy())


def test_without_scale_and_center():
    fused, plain = pair(scale=False, center=False)
    x = inputs()
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=ATOL * 10)


def test_bfloat16_activations_stay_bfloat16_and_match():
    fused = FusedBatchNormalization(epsilon=1e-5, dtype="mixed_bfloat16")
    plain = keras.layers.BatchNormalization(epsilon=1e-5, dtype="mixed_bfloat16")
    x = tf.cast(inputs(), "bfloat16")
    got, want = fused(x, training=True), plain(x, training=True)
    assert got.dtype == want.dtype == tf.bfloat16
    assert fused.moving_mean.dtype == "float32"
    # Both compute in float32 and round the result to bfloat16 (8 bits of mantissa):
    # at most one bfloat16 step apart on values of size ~3.
    np.testing.assert_allclose(
        tf.cast(got, "float32"), tf.cast(want, "float32"), atol=2.0**-8 * 4, rtol=2.0**-7
    )
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"synchronized": True}, (2, 7, 6, 5)),
        ({"renorm": True}, (2, 7, 6, 5)),
        ({"axis": 1}, (2, 5, 6, 7)),
        ({}, (2, 7, 5)),
    ],
    ids=["synchronized", "renorm", "channels_first", "3d"],
)
def test_cases_without_the_fused_kernel_are_keras_layer(kwargs, shape):
    fused = FusedBatchNormalization(**kwargs)
    plain = keras.layers.BatchNormalization(**kwargs)
    x = inputs(shape)
    np.testing.assert_allclose(fused(x, training=True), plain(x, training=True), atol=1e-6)
    assert not uses_fused_kernel(fused, x, True)


def test_saved_and_loaded_as_itself(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 3)), FusedBatchNormalization(momentum=0.5)])
    model(np.ones((1, 4, 4, 3), "float32"), training=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[0], FusedBatchNormalization)
    assert loaded.layers[0].momentum == 0.5
    np.testing.assert_allclose(loaded.layers[0].moving_mean.numpy(), model.layers[0].moving_mean.numpy())
