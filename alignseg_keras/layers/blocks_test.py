"""Tests of ResidualConvBlock, OffsetHead, AlignFA, AlignCM, heads and preprocessing."""

import keras
import numpy as np
import pytest

from alignseg_keras import layers

LAYERS = [
    (layers.ConvNormActivation, dict(filters=8, kernel_size=3, strides=2, activation="leaky_relu")),
    (layers.ResidualConvBlock, dict(filters=16, activation="leaky_relu")),
    (layers.OffsetHead, dict(filters=8)),
    (layers.AlignFA, dict(offset_filters=8, alignment="official", activation="leaky_relu")),
    (layers.AlignCM, dict(filters=8, bins=2, hidden_filters=12, merge="concat", alignment="official")),
    (layers.SegmentationHead, dict(num_classes=5, filters=8, dropout=0.2)),
    (layers.AlignmentLayer, dict(mode="official")),
    (layers.BilinearResize, dict(align_corners=False)),
    (layers.AdaptiveAveragePooling2D, dict(bins=6)),
    (layers.ImageNormalization, dict(mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0), bgr=True)),
    (layers.PadToMultiple, dict(multiple=16)),
    (layers.CropToReference, dict()),
]


@pytest.mark.parametrize("cls,kwargs", LAYERS, ids=[c.__name__ for c, _ in LAYERS])
def test_config_round_trip(cls, kwargs):
    layer = cls(name="layer_under_test", **kwargs)
    config = layer.get_config()
    for key, value in kwargs.items():
        restored = config[key]
        assert restored == value or list(restored) == list(value), key
    clone = cls.from_config(config)
    assert clone.get_config() == config
    # Registered: a plain Keras deserialisation finds the class.
    serialized = keras.saving.serialize_keras_object(layer)
    assert type(keras.saving.deserialize_keras_object(serialized)) is cls


def test_residual_conv_block_shapes_and_residual():
    block = layers.ResidualConvBlock(16)
    out = block(np.random.rand(2, 9, 11, 40).astype("float32"))
    assert tuple(out.shape) == (2, 9, 11, 16)
    assert block.residual_reduce.conv.kernel.shape == (3, 3, 16, 4)
    assert block.residual_expand.kernel.shape == (3, 3, 4, 16)
    assert block.unify.kernel.shape == (1, 1, 40, 16)
    assert not block.unify.use_bias and not block.residual_expand.use_bias
    # With a zero residual branch the block is act(BN(unify(x))).
    block.residual_expand.kernel.assign(np.zeros((3, 3, 4, 16), "float32"))
    x = np.random.rand(1, 5, 5, 40).astype("float32")
    unified = np.asarray(block.unify(x))
    expected = np.maximum(unified / np.sqrt(1 + 1e-5), 0)
    np.testing.assert_allclose(np.asarray(block(x)), expected, atol=1e-5)


def test_align_fa_starts_as_upsample_and_sum():
    fine = np.random.rand(2, 12, 10, 8).astype("float32")
    coarse = np.random.rand(2, 6, 5, 8).astype("float32")
    module = layers.AlignFA(offset_filters=4)
    out, offsets = module([fine, coarse], return_offsets=True)
    assert tuple(offsets.shape) == (2, 12, 10, 4)
    np.testing.assert_allclose(np.asarray(offsets), 0.0)
    expected = fine + np.asarray(layers.resize_bilinear(coarse, (12, 10)))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)


def test_align_fa_offsets_move_the_samples():
    fine = np.zeros((1, 8, 8, 2), "float32")
    coarse = np.random.rand(1, 8, 8, 2).astype("float32")
    module = layers.AlignFA(offset_filters=4)
    module([fine, coarse])
    # A constant offset of one pixel down: bias the hidden 1x1 conv output.
    head = module.low_resolution_offsets
    kernel = np.zeros(head.offsets.kernel.shape, "float32")
    kernel[1, 1, :, 0] = 1.0  # dy from every hidden channel
    head.offsets.kernel.assign(kernel)
    head.hidden.norm.beta.assign(np.full((4,), 0.25, "float32"))
    head.hidden.conv.kernel.assign(np.zeros(head.hidden.conv.kernel.shape, "float32"))
    out = np.asarray(module([fine, coarse]))
    np.testing.assert_allclose(out[0, :-1], coarse[0, 1:], atol=1e-5)  # dy = 4 * 0.25 = 1
    np.testing.assert_allclose(out[0, -1], 0.0, atol=1e-6)  # zeros outside


def test_align_fa_rejects_different_channels():
    with pytest.raises(ValueError, match="channels"):
        layers.AlignFA()([np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 2, 2, 4), "float32")])


@pytest.mark.parametrize("merge,channels", [("sum", 8), ("concat", 16)])
def test_align_cm_shapes_and_initial_context(merge, channels):
    x = np.random.rand(2, 7, 9, 12).astype("float32")
    module = layers.AlignCM(filters=8, bins=3, merge=merge)
    out, offsets = module(x, return_offsets=True)
    assert tuple(out.shape) == (2, 7, 9, channels)
    assert tuple(offsets.shape) == (2, 7, 9, 2)
    assert module.context_reduce.conv.kernel.shape == (1, 1, 12, 12)  # hidden = input channels
    # Zero offsets at initialisation: the context is the pooled map upsampled.
    pooled = module.context_project(module.context_reduce(module.pool(x)))
    local = module.local_project(module.local_reduce(x))
    context = layers.resize_bilinear(pooled, (7, 9))
    expected = local + context if merge == "sum" else np.concatenate([local, context], -1)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)


def test_align_cm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="merge"):
        layers.AlignCM(merge="add")
    with pytest.raises(ValueError, match="bins"):
        layers.AlignCM(bins=0)


def test_activation_is_validated():
    with pytest.raises(ValueError, match="activation"):
        layers.ResidualConvBlock(8, activation="gelu")


def test_conv_norm_activation_pads_symmetrically_with_stride():
    layer = layers.ConvNormActivation(1, kernel_size=3, strides=2, activation=None)
    x = np.zeros((1, 6, 6, 1), "float32")
    layer(x)
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[0, 0, 0, 0] = 1.0  # picks the top-left tap
    layer.conv.kernel.assign(kernel)
    x[0, 1, 1, 0] = 7.0
    out = np.asarray(layer(x)) * np.sqrt(1 + 1e-5)
    # PyTorch pads 1 on every side: the top-left tap of output (1, 1) reads
    # input (1, 1); Keras "same" (no top padding here) would read (2, 2).
    assert out.shape == (1, 3, 3, 1)
    np.testing.assert_allclose(out[0, 1, 1, 0], 7.0, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 0, 0], 0.0)


def test_image_normalization_and_padding():
    images = np.full((1, 5, 6, 3), 100, "uint8")
    out = layers.ImageNormalization(mean=(10, 20, 30), std=(2, 4, 5), bgr=True)(images)
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [14, 20, 45])
    padded = layers.PadToMultiple(4)(np.ones((1, 5, 6, 3), "float32"))
    assert tuple(padded.shape) == (1, 8, 8, 3)
    assert np.asarray(padded)[0, 5:].sum() == 0
    cropped = layers.CropToReference()([padded, images])
    assert tuple(cropped.shape) == (1, 5, 6, 3)
    with pytest.raises(ValueError, match="std"):
        layers.ImageNormalization(mean=(0, 0, 0), std=(1, 0, 1))
