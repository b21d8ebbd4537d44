import os

import keras
import numpy as np
import pytest

from alignseg_keras.batch_norm_folding import conv_norm_pairs
from alignseg_keras.batch_norm_folding import fold_batch_normalization
from alignseg_keras.batch_norm_folding import fold_in_place
from alignseg_keras.inference import as_precision
from alignseg_keras.inference import inference_model
from alignseg_keras.layers import FusedBatchNormalization
from alignseg_keras.layers import ResidualConvBlock
from alignseg_keras.testing import randomize_statistics
from alignseg_keras.testing import relative_error
from alignseg_keras.testing import tiny_alignseg

EPSILON = 1e-5


def small_functional_model():
    """conv -> norm -> relu (folded); conv with bias -> norm (folded); a conv whose
    output also feeds an addition (kept); Keras' own BatchNormalization (kept)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="a")(inputs)
    x = keras.layers.ReLU()(FusedBatchNormalization(epsilon=EPSILON, name="a_norm")(x))
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=True, name="b")(x)
    x = FusedBatchNormalization(epsilon=EPSILON, name="b_norm")(x)
    shared = keras.layers.Conv2D(8, 1, use_bias=False, name="c")(x)
    x = keras.layers.Add()([FusedBatchNormalization(epsilon=EPSILON, name="c_norm")(shared), shared])
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="d")(x)
    outputs = keras.layers.BatchNormalization(epsilon=EPSILON, name="d_norm")(x)
    model = keras.Model(inputs, outputs)
    randomize_statistics(model)
    bias = model.get_layer("b").bias
    bias.assign(np.random.default_rng(2).normal(0.0, 1.0, bias.shape))
    return model


def numpy_reference(model, images):
    """The functional model's inference computed layer by layer in float64 NumPy."""
    x = images.astype(np.float64)

    def conv(name, x, stride=1, same=True):
        layer = model.get_layer(name)
        kernel = np.asarray(layer.kernel, np.float64)
        size = kernel.shape[0]
        if same:
            x = np.pad(x, ((0, 0), (size // 2, size // 2), (size // 2, size // 2), (0, 0)))
        rows = (x.shape[1] - size) // stride + 1
        cols = (x.shape[2] - size) // stride + 1
        out = np.zeros((x.shape[0], rows, cols, kernel.shape[-1]))
        for i in range(size):
            for j in range(size):
                patch = x[:, i : i + stride * rows : stride, j : j + stride * cols : stride]
                out += patch @ kernel[i, j]
        return out + (np.asarray(layer.bias, np.float64) if layer.use_bias else 0.0)

    def norm(name, x):
        layer = model.get_layer(name)
        weights = [np.asarray(w, np.float64) for w in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)]
        gamma, beta, mean, variance = weights
        return gamma * (x - mean) / np.sqrt(variance + layer.epsilon) + beta

    x = np.maximum(norm("a_norm", conv("a", x)), 0.0)
    x = norm("b_norm", conv("b", x, stride=2, same=False))
    shared = conv("c", x)
    x = norm("c_norm", shared) + shared
    return norm("d_norm", conv("d", x))


def test_folds_the_conv_norm_pairs_and_keeps_the_rest():
    model = small_functional_model()
    names = sorted((conv.name, norm.name) for conv, norm in conv_norm_pairs(model))
    assert names == [("a", "a_norm"), ("b", "b_norm")]
    folded = fold_batch_normalization(model)
    layers = {layer.name: layer for layer in folded.layers}
    assert layers["a_norm"].folded and layers["b_norm"].folded
    assert not layers["a_norm"].trainable
    assert not layers["c_norm"].folded and layers["c_norm"].trainable
    np.testing.assert_array_equal(layers["b"].bias, np.zeros(8, "float32"))


def test_a_convolution_with_its_own_activation_is_not_folded():
    # Folded as if linear, relu's output was scaled and shifted before it (a relative
    # error of 1.0 with this model's biases and negative scales).
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="relu_conv")(inputs)
    model = keras.Model(inputs, FusedBatchNormalization(epsilon=EPSILON, name="norm")(x))
    randomize_statistics(model, biases=True)
    gamma = model.get_layer("norm").gamma
    gamma.assign(-np.asarray(gamma))
    assert conv_norm_pairs(model) == []
    images = np.random.default_rng(5).normal(0.0, 50.0, (1, 12, 12, 3)).astype("float32")
    folded = fold_batch_normalization(model)
    expected = np.asarray(model(images), np.float64)
    assert relative_error(np.asarray(folded(images), np.float64), expected) < 1e-6


def test_folded_model_computes_the_numpy_reference():
    model = small_functional_model()
    images = np.random.default_rng(1).uniform(0, 1, (2, 13, 11, 3)).astype("float32")
    expected = numpy_reference(model, images)
    original = model.predict_on_batch(images)
    folded = fold_batch_normalization(model).predict_on_batch(images)
    # float32 rounding through four layers: a few 1e-7 relative; 1e-5 leaves room.
    assert relative_error(original, expected) < 1e-5
    assert relative_error(folded, expected) < 1e-5


def test_the_original_model_is_unchanged():
    model = small_functional_model()
    before = [np.array(w) for w in model.get_weights()]
    fold_batch_normalization(model)
    for weight, value in zip(model.get_weights(), before):
        np.testing.assert_array_equal(weight, value)
    assert not any(getattr(layer, "folded", False) for layer in model.layers)


def test_folding_twice_folds_nothing_more():
    folded = fold_batch_normalization(small_functional_model())
    assert fold_in_place(folded) == 0


@pytest.fixture(scope="module")
def alignseg():
    model = tiny_alignseg(num_classes=4, seed=2)
    randomize_statistics(model, seed=4)
    return model


def test_alignseg_folds_all_but_the_residual_sums(alignseg):
    norms = [
        layer for layer in alignseg._flatten_layers(recursive=True)
        if isinstance(layer, FusedBatchNormalization)
    ]
    blocks = [
        layer for layer in alignseg._flatten_layers(recursive=True)
        if isinstance(layer, ResidualConvBlock)
    ]
    pairs = conv_norm_pairs(alignseg)
    assert len(pairs) == len(norms) - len(blocks)
    assert not {id(block.norm) for block in blocks} & {id(norm) for _, norm in pairs}


def test_folded_alignseg_logits_equal_the_original_to_rounding(alignseg):
    images = np.random.default_rng(5).uniform(0, 255, (2, 64, 48, 3)).astype("float32")
    original = np.asarray(alignseg(images, training=False), np.float64)
    folded = np.asarray(fold_batch_normalization(alignseg)(images, training=False))
    # Twenty-odd layers of float32 rounding (about 1e-7 each, relative).
    assert relative_error(folded, original) < 1e-4


def test_saved_folded_model_loads_as_the_same_function(alignseg, tmp_path):
    images = np.random.default_rng(6).uniform(0, 255, (1, 48, 48, 3)).astype("float32")
    folded = fold_batch_normalization(alignseg)
    path = os.path.join(tmp_path, "folded.keras")
    folded.save(path)
    loaded = keras.saving.load_model(path)
    assert not any(getattr(layer, "folded", False) for layer in loaded._flatten_layers(recursive=True))
    expected = np.asarray(folded(images, training=False), np.float64)
    assert relative_error(loaded(images, training=False), expected) < 1e-4


def test_bfloat16_inference_model_is_folded_and_agrees(alignseg):
    images = np.random.default_rng(7).uniform(0, 255, (2, 48, 64, 3)).astype("float32")
    fast = inference_model(alignseg, "bfloat16")
    assert fast.dtype_policy.name == "mixed_bfloat16"
    assert sum(getattr(layer, "folded", False) for layer in fast._flatten_layers(recursive=True)) == len(
        conv_norm_pairs(alignseg)
    )
    unfolded = as_precision(alignseg, "bfloat16")
    reference = np.asarray(alignseg(images, training=False))
    for model in (fast, unfolded):
        logits = np.asarray(model(images, training=False))
        # Both round kernels and activations to bfloat16's 8 bits; labels of this
        # random tiny model agree at ~99% of the pixels either way.
        assert (logits.argmax(-1) == reference.argmax(-1)).mean() > 0.95
    already = inference_model(unfolded, "bfloat16")
    # Folding a model that already computes in bfloat16 keeps it so, whatever the global policy.
    assert keras.config.dtype_policy().name == "float32"
    assert {layer.dtype_policy.name for layer in already._flatten_layers(recursive=True)} == {
        layer.dtype_policy.name for layer in unfolded._flatten_layers(recursive=True)
    }
    assert already is not unfolded and not any(
        getattr(layer, "folded", False) for layer in unfolded._flatten_layers(recursive=True)
    )
    assert inference_model(alignseg, "float32") is alignseg


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs")
def test_folded_norms_leave_no_batch_norm_kernel_in_the_graph(alignseg):
    import tensorflow as tf

    def batch_norm_ops(model):
        function = tf.function(lambda x: model(x, training=False))
        graph = function.get_concrete_function(tf.TensorSpec((1, 64, 64, 3))).graph
        return sum("FusedBatchNorm" in op.type for op in graph.get_operations())

    blocks = sum(isinstance(layer, ResidualConvBlock) for layer in alignseg._flatten_layers(recursive=True))
    fast = inference_model(alignseg, "bfloat16")
    assert batch_norm_ops(fast) == blocks
    assert batch_norm_ops(as_precision(alignseg, "bfloat16")) > blocks


def test_an_unbuilt_model_is_refused_by_name():
    model = keras.Sequential([keras.layers.Conv2D(4, 3), FusedBatchNormalization()], name="unbuilt")
    with pytest.raises(ValueError, match="unbuilt is not built"):
        fold_batch_normalization(model)
