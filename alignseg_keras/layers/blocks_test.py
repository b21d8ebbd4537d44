"""Tests of ResidualConvBlock, OffsetHead, AlignFA, AlignCM, heads and preprocessing."""

import keras
import numpy as np
import pytest
from keras import ops

from alignseg_keras import layers
from alignseg_keras.testing.layer_test import run_layer_test

# (class, init kwargs, input shapes, output shapes, call kwargs, trainable / non-trainable weights)
LAYERS = [
    (layers.ConvNormActivation,
     dict(filters=8, kernel_size=3, strides=2, activation="leaky_relu"),
     [(2, 9, 11, 4)], [(2, 5, 6, 8)], {}, (3, 2)),
    (layers.FusedBatchNormalization, dict(epsilon=1e-5, momentum=0.9),
     [(2, 9, 11, 4)], [(2, 9, 11, 4)], {}, (2, 2)),
    (layers.ResidualConvBlock, dict(filters=16, activation="leaky_relu"),
     [(2, 9, 11, 40)], [(2, 9, 11, 16)], {}, (7, 4)),
    (layers.OffsetHead, dict(offset_channels=8), [(2, 9, 11, 16)], [(2, 9, 11, 2)], {}, (4, 2)),
    (layers.AlignFA, dict(offset_channels=8, alignment="official", activation="leaky_relu"),
     [(2, 12, 10, 8), (2, 6, 5, 8)], [(2, 12, 10, 8), (2, 12, 10, 4)],
     {"return_offsets": True}, (8, 4)),
    (layers.AlignFA, dict(offset_channels=8, align_fa_offsets="high_res"),
     [(2, 12, 10, 8), (2, 6, 5, 8)], [(2, 12, 10, 8), (2, 12, 10, 2)],
     {"return_offsets": True}, (4, 2)),
    (layers.AlignFA, dict(offset_channels=8, align_fa_offsets="low_res"),
     [(2, 12, 10, 8), (2, 6, 5, 8)], [(2, 12, 10, 8)], {}, (4, 2)),
    (layers.AlignCM,
     dict(filters=8, context_bins=2, context_hidden_channels=12, context_merge="concat",
          alignment="official"),
     [(2, 7, 9, 12)], [(2, 7, 9, 16), (2, 7, 9, 2)], {"return_offsets": True}, (16, 10)),
    (layers.AlignCM, dict(filters=8, context_bins=6, context_hidden_channels=12, context="pool"),
     [(2, 7, 9, 12)], [(2, 7, 9, 8)], {}, (12, 8)),
    (layers.UpsampleFusion, dict(fusion="bilinear", upsampling_factor=4),
     [(2, 12, 10, 8), (2, 3, 3, 8)], [(2, 12, 10, 8)], {}, (0, 0)),
    (layers.UpsampleFusion, dict(fusion="deconv", upsampling_factor=4),
     [(2, 12, 10, 8), (2, 3, 3, 8)], [(2, 12, 10, 8)], {}, (2, 0)),
    (layers.SegmentationHead, dict(num_classes=5, filters=8, dropout=0.2),
     [(2, 9, 11, 8)], [(2, 9, 11, 5)], {}, (6, 2)),
    (layers.AlignmentLayer, dict(alignment="official"),
     [(2, 6, 5, 3), (2, 12, 10, 2)], [(2, 12, 10, 3)], {}, (0, 0)),
    (layers.BilinearResize, dict(align_corners=False),
     [(2, 6, 5, 3), (2, 12, 10, 1)], [(2, 12, 10, 3)], {}, (0, 0)),
    (layers.AdaptiveAveragePooling2D, dict(bins=6), [(2, 13, 17, 3)], [(2, 6, 6, 3)], {}, (0, 0)),
    (layers.ImageNormalization, dict(mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0], bgr=True),
     [(2, 5, 6, 3)], [(2, 5, 6, 3)], {}, (0, 0)),
    (layers.PadToMultiple, dict(multiple=16), [(2, 17, 20, 3)], [(2, 32, 32, 3)], {}, (0, 0)),
    (layers.CropToReference, dict(), [(2, 32, 32, 3), (2, 17, 20, 3)], [(2, 17, 20, 3)], {},
     (0, 0)),
]


@pytest.mark.parametrize(
    "cls,kwargs,input_shapes,output_shapes,call_kwargs,weights",
    LAYERS,
    ids=[entry[0].__name__ for entry in LAYERS],
)
def test_layer(cls, kwargs, input_shapes, output_shapes, call_kwargs, weights):
    run_layer_test(
        cls,
        kwargs,
        input_shapes,
        output_shapes,
        call_kwargs=call_kwargs,
        expected_num_trainable_weights=weights[0],
        expected_num_non_trainable_weights=weights[1],
    )


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
    unified = ops.convert_to_numpy(block.unify(x))
    expected = np.maximum(unified / np.sqrt(1 + 1e-5), 0)
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), expected, atol=1e-5)


def test_align_fa_starts_as_upsample_and_sum():
    fine = np.random.rand(2, 12, 10, 8).astype("float32")
    coarse = np.random.rand(2, 6, 5, 8).astype("float32")
    module = layers.AlignFA(offset_channels=4)
    out, offsets = module([fine, coarse], return_offsets=True)
    assert tuple(offsets.shape) == (2, 12, 10, 4)
    np.testing.assert_allclose(ops.convert_to_numpy(offsets), 0.0)
    expected = fine + ops.convert_to_numpy(layers.resize_bilinear(coarse, (12, 10)))
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-5)


def test_align_fa_offsets_move_the_samples():
    fine = np.zeros((1, 8, 8, 2), "float32")
    coarse = np.random.rand(1, 8, 8, 2).astype("float32")
    module = layers.AlignFA(offset_channels=4)
    module([fine, coarse])
    # A constant offset of one pixel down: bias the hidden 1x1 conv output.
    head = module.low_resolution_offsets
    kernel = np.zeros(head.offsets.kernel.shape, "float32")
    kernel[1, 1, :, 0] = 1.0  # dy from every hidden channel
    head.offsets.kernel.assign(kernel)
    head.hidden.norm.beta.assign(np.full((4,), 0.25, "float32"))
    head.hidden.conv.kernel.assign(np.zeros(head.hidden.conv.kernel.shape, "float32"))
    out = ops.convert_to_numpy(module([fine, coarse]))
    np.testing.assert_allclose(out[0, :-1], coarse[0, 1:], atol=1e-5)  # dy = 4 * 0.25 = 1
    np.testing.assert_allclose(out[0, -1], 0.0, atol=1e-6)  # zeros outside


def _convolution_pair(seed, shape=(2, 7, 9, 6), size=3, out_channels=2, dtype="float32"):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=shape).astype(dtype)
    kernel = rng.normal(size=(size, size, shape[-1], out_channels)).astype(dtype)
    return inputs, kernel


def _absolute_convolution(inputs, kernel):
    """`conv(|x|, |W|)` in float64: what the rounding bounds of a convolution scale with."""
    return ops.convert_to_numpy(ops.conv(np.abs(inputs).astype("float64"),
                                         np.abs(kernel).astype("float64"), padding="same"))


@pytest.mark.parametrize("size,shape,out_channels", [
    (3, (2, 7, 9, 6), 2), (1, (1, 5, 4, 3), 2), (5, (2, 6, 11, 4), 3), (3, (1, 2, 1, 8), 2)])
def test_convolution_by_shifted_products_is_the_convolution(size, shape, out_channels):
    inputs, kernel = _convolution_pair(0, shape, size, out_channels)
    shifted = ops.convert_to_numpy(layers.convolution_by_shifted_products(inputs, kernel))
    # Keras' own "same" convolution, in float64: the float32 result may differ from it
    # by the rounding of its two sums, at most 2 n u sum |x||W| with n terms per output.
    exact = ops.convert_to_numpy(ops.conv(inputs.astype("float64"), kernel.astype("float64"),
                                          padding="same"))
    terms = size * size * shape[-1]
    bound = 2 * terms * np.finfo("float32").eps / 2 * _absolute_convolution(inputs, kernel)
    assert shifted.dtype == np.float32 and shifted.shape == exact.shape
    assert np.all(np.abs(shifted - exact) <= bound)
    # Not trivially: the kernel's taps are placed where the convolution places them.
    assert np.abs(exact).max() > 100 * bound.max()


@pytest.mark.parametrize("kernel_shape", [(2, 2, 3, 2), (3, 1, 3, 2)])
def test_convolution_by_shifted_products_names_a_kernel_it_cannot_shift(kernel_shape):
    with pytest.raises(ValueError, match=r"odd size.*\(" + ", ".join(map(str, kernel_shape))):
        layers.convolution_by_shifted_products(np.zeros((1, 4, 4, 3), "float32"), np.zeros(kernel_shape, "float32"))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="float64 gradients through tf.GradientTape")
def test_convolution_by_shifted_products_has_the_convolutions_gradients():
    import tensorflow as tf

    inputs, kernel = _convolution_pair(1, dtype="float64")
    weights = np.random.default_rng(2).normal(size=inputs.shape[:-1] + (2,))
    inputs, kernel = tf.constant(inputs), tf.constant(kernel)
    results = []
    for convolve in (lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), layers.convolution_by_shifted_products):
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel])
            value = tf.reduce_sum(convolve(inputs, kernel) * weights)
        results.append([g.numpy() for g in tape.gradient(value, [inputs, kernel])])
    # float64 throughout: equal to float64 rounding of sums of at most 2 * 7 * 9 terms.
    for shifted, direct in zip(results[1], results[0]):
        np.testing.assert_allclose(shifted, direct, rtol=0, atol=1e-12 * np.abs(direct).max())


def test_convolution_by_shifted_products_in_bfloat16():
    # bfloat16 inputs and kernel, so that the products are exact in float32.
    inputs, kernel = (ops.convert_to_numpy(ops.cast(ops.cast(v, "bfloat16"), "float32"))
                      for v in _convolution_pair(3, (2, 9, 8, 64)))
    shifted = layers.convolution_by_shifted_products(ops.cast(inputs, "bfloat16"), ops.cast(kernel, "bfloat16"))
    assert keras.backend.standardize_dtype(shifted.dtype) == "bfloat16"
    shifted = ops.convert_to_numpy(ops.cast(shifted, "float32")).astype("float64")
    exact = ops.convert_to_numpy(ops.conv(inputs.astype("float64"), kernel.astype("float64"), padding="same"))
    # Each tap's product z_ij is rounded to bfloat16 once (unit roundoff 2^-8), the sum of
    # the taps once more; the float32 sums add at most 2 n u32 sum |x||W|.
    # (sum_ij |z_ij| <= conv(|x|, |W|) at every output.)
    magnitude = _absolute_convolution(inputs, kernel)
    bound = 2.0 ** -8 * (magnitude + np.abs(exact)) + 2 * 9 * 64 * 2.0 ** -24 * magnitude
    assert np.all(np.abs(shifted - exact) <= bound)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_offset_head_computes_its_convolution_layer(dtype):
    """The head's output is its `offsets` Conv2D layer applied to its hidden features:
    the weights of saved files and converted checkpoints mean what they meant."""
    head = layers.OffsetHead(offset_channels=16, dtype=dtype)
    inputs = np.random.default_rng(5).normal(size=(2, 9, 11, 12)).astype("float32")
    head.build(inputs.shape)
    _randomized(head, 6)
    offsets = head(inputs, training=False)
    by_layer = head.offsets(head.hidden(inputs, training=False))
    assert offsets.dtype == by_layer.dtype and tuple(offsets.shape) == (2, 9, 11, 2)
    offsets, by_layer = (ops.convert_to_numpy(ops.cast(v, "float32")) for v in (offsets, by_layer))
    hidden = ops.convert_to_numpy(ops.cast(head.hidden(inputs, training=False), "float32"))
    magnitude = _absolute_convolution(hidden, ops.convert_to_numpy(head.offsets.kernel))
    # float32: both sums' rounding; bfloat16: each side's roundings to 2^-8 (see above).
    unit = 2.0 ** -8 if dtype == "mixed_bfloat16" else 2 * 9 * 16 * 2.0 ** -24
    assert np.all(np.abs(offsets - by_layer) <= 2 * unit * (magnitude + np.abs(by_layer)))
    assert np.abs(by_layer).max() > 10 * (unit * magnitude).max()


def _randomized(layer, seed, scale=0.3):
    """`layer` with every weight random (offsets kernels included, which start at 0)."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        values = rng.normal(size=weight.shape) * scale
        if "variance" in weight.path:
            values = rng.uniform(0.5, 2.0, size=weight.shape)
        weight.assign(values.astype("float32"))
    return layer


def _head_pair(seed=0, high_channels=6, low_channels=5, dtype=None):
    rng = np.random.default_rng(seed)
    high = rng.normal(size=(2, 11, 9, high_channels)).astype("float32")
    low = rng.normal(size=(2, 4, 5, low_channels)).astype("float32")
    head = layers.OffsetHead(offset_channels=7, dtype=dtype)
    head.build((2, 11, 9, high_channels + low_channels))
    return _randomized(head, seed), high, low


def _concatenated_offsets(head, high, low, training):
    """The paper's form: the head on [A, up(F)], F upsampled first."""
    upsampled = layers.resize_bilinear(low, (high.shape[1], high.shape[2]))
    return head(ops.concatenate([high, upsampled], axis=-1), training=training)


@pytest.mark.parametrize("training", [False, True])
def test_offset_head_on_upsampled_pair_equals_concatenation(training):
    head, high, low = _head_pair()
    split = ops.convert_to_numpy(head.call_on_upsampled_pair(high, low, training=training))
    concatenated = ops.convert_to_numpy(_concatenated_offsets(head, high, low, training))
    # float32 sums of a few dozen terms, in another order: rounding only.
    np.testing.assert_allclose(split, concatenated, atol=1e-5 * max(1.0, np.abs(concatenated).max()))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradients through tf.GradientTape")
@pytest.mark.parametrize("training", [False, True])
def test_offset_head_on_upsampled_pair_has_the_concatenations_gradients(training):
    import tensorflow as tf

    head, high, low = _head_pair()
    high, low = tf.constant(high), tf.constant(low)
    results = []
    for compute in (_concatenated_offsets, lambda h, a, f, t: h.call_on_upsampled_pair(a, f, t)):
        with tf.GradientTape() as tape:
            tape.watch([high, low])
            offsets = compute(head, high, low, training)
            # A weighted sum, so that every gradient is non-trivial.
            weights = tf.reshape(tf.range(tf.size(offsets), dtype=offsets.dtype), offsets.shape)
            value = tf.reduce_sum(offsets * weights ** 0.5 * 0.01)
        gradients = tape.gradient(value, [high, low, *head.trainable_weights])
        results.append([g.numpy() for g in gradients])
    for split, concatenated in zip(results[1], results[0]):
        np.testing.assert_allclose(split, concatenated, atol=1e-5 * max(1.0, np.abs(concatenated).max()))


def test_offset_head_on_upsampled_pair_in_bfloat16():
    head, high, low = _head_pair(seed=1)
    exact = ops.convert_to_numpy(_concatenated_offsets(head, high, low, False))
    half, _, _ = _head_pair(seed=1, dtype="mixed_bfloat16")
    split = ops.convert_to_numpy(ops.cast(half.call_on_upsampled_pair(high, low), "float32"))
    concatenated = ops.convert_to_numpy(
        ops.cast(_concatenated_offsets(half, high, low, False), "float32"))
    # No further from float32 than bfloat16 arithmetic in the paper's form is (x2 margin:
    # the split rounds two partial sums instead of one).
    baseline = np.abs(concatenated - exact).max()
    assert 0 < np.abs(split - exact).max() <= 2 * baseline


@pytest.mark.parametrize("align_fa_offsets", ["both", "low_res", "high_res"])
def test_align_fa_equals_equation_1(align_fa_offsets):
    rng = np.random.default_rng(2)
    fine = rng.normal(size=(2, 12, 10, 8)).astype("float32")
    coarse = rng.normal(size=(2, 5, 4, 8)).astype("float32")
    module = layers.AlignFA(offset_channels=6, align_fa_offsets=align_fa_offsets)
    module([fine, coarse])
    _randomized(module, 3, scale=1.0)
    out, offsets = module([fine, coarse], return_offsets=True)
    # Eq. 1 from its parts: offsets from [A, up(F)], out = U(up(F), D_F) + U(A, D_A).
    upsampled = layers.resize_bilinear(coarse, (12, 10))
    concat = ops.concatenate([fine, upsampled], axis=-1)
    align = layers.AlignmentLayer()
    expected, fields = 0.0, []
    for head, feature in ((module.low_resolution_offsets, upsampled),
                          (module.high_resolution_offsets, fine)):
        if head is None:
            expected = expected + ops.convert_to_numpy(feature)
            continue
        fields.append(ops.convert_to_numpy(head(concat)))
        expected = expected + ops.convert_to_numpy(align([feature, fields[-1]]))
    expected_offsets = np.concatenate(fields, axis=-1)
    assert np.abs(expected_offsets).max() > 1.0  # the samples really move
    np.testing.assert_allclose(ops.convert_to_numpy(offsets), expected_offsets, atol=1e-4)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-4)


def test_align_fa_rejects_different_channels():
    with pytest.raises(ValueError, match="channels"):
        layers.AlignFA()([np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 2, 2, 4), "float32")])


@pytest.mark.parametrize("merge,channels", [("sum", 8), ("concat", 16)])
def test_align_cm_shapes_and_initial_context(merge, channels):
    x = np.random.rand(2, 7, 9, 12).astype("float32")
    module = layers.AlignCM(filters=8, context_bins=3, context_merge=merge)
    out, offsets = module(x, return_offsets=True)
    assert tuple(out.shape) == (2, 7, 9, channels)
    assert tuple(offsets.shape) == (2, 7, 9, 2)
    assert module.context_reduce.conv.kernel.shape == (1, 1, 12, 12)  # hidden = input channels
    # Zero offsets at initialisation: the context is the pooled map upsampled.
    pooled = module.context_project(module.context_reduce(module.pool(x)))
    local = module.local_project(module.local_reduce(x))
    context = layers.resize_bilinear(pooled, (7, 9))
    expected = local + context if merge == "sum" else ops.concatenate([local, context], -1)
    np.testing.assert_allclose(ops.convert_to_numpy(out), ops.convert_to_numpy(expected), atol=1e-5)


@pytest.mark.parametrize("side", ["low_res", "high_res"])
def test_align_fa_aligns_one_side_and_uses_the_other_as_is(side):
    fine = np.random.rand(2, 12, 10, 8).astype("float32")
    coarse = np.random.rand(2, 6, 5, 8).astype("float32")
    module = layers.AlignFA(offset_channels=4, alignment="official", align_fa_offsets=side)
    module([fine, coarse])
    head = module.low_resolution_offsets if side == "low_res" else module.high_resolution_offsets
    other = module.high_resolution_offsets if side == "low_res" else module.low_resolution_offsets
    assert other is None and head is not None
    # A constant offset field of (1, -1) half pixels for the aligned side.
    kernel = np.zeros(head.offsets.kernel.shape, "float32")
    kernel[1, 1, :, 0], kernel[1, 1, :, 1] = 1.0, -1.0
    head.offsets.kernel.assign(kernel)
    head.hidden.norm.beta.assign(np.full((4,), 0.25, "float32"))
    head.hidden.conv.kernel.assign(np.zeros(head.hidden.conv.kernel.shape, "float32"))
    out, offsets = module([fine, coarse], return_offsets=True)
    field = np.zeros((2, 12, 10, 2), "float32")
    field[..., 0], field[..., 1] = 1.0, -1.0
    np.testing.assert_allclose(ops.convert_to_numpy(offsets), field, atol=1e-6)
    upsampled = ops.convert_to_numpy(layers.resize_bilinear(coarse, (12, 10)))
    align = layers.AlignmentLayer("official")
    if side == "low_res":
        expected = ops.convert_to_numpy(align([upsampled, field])) + fine
    else:
        expected = upsampled + ops.convert_to_numpy(align([fine, field]))
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-5)


def test_align_cm_without_alignment_upsamples_the_pooled_context():
    x = np.random.rand(2, 7, 9, 12).astype("float32")
    module = layers.AlignCM(filters=8, context_bins=2, context="pool", alignment="official")
    out = module(x)
    assert module.offset_head is None
    pooled = module.context_project(module.context_reduce(module.pool(x)))
    local = module.local_project(module.local_reduce(x))
    expected = local + layers.resize_bilinear(pooled, (7, 9))
    np.testing.assert_allclose(ops.convert_to_numpy(out), ops.convert_to_numpy(expected), atol=1e-5)
    with pytest.raises(ValueError, match="return_offsets"):
        module(x, return_offsets=True)


def test_deconv_fusion_starts_as_bilinear_upsampling_and_fits_any_size():
    fine = np.random.rand(2, 12, 10, 8).astype("float32")
    coarse = np.random.rand(2, 6, 5, 8).astype("float32")
    fused = ops.convert_to_numpy(layers.UpsampleFusion("deconv", 2)([fine, coarse]))
    # Half-pixel bilinear upsampling (TensorFlow's resize), away from the border.
    ratio = 2.0
    expected = np.zeros((2, 12, 10, 8))
    for i in range(12):
        y = min(max((i + 0.5) / ratio - 0.5, 0), 5)
        y0, wy = int(np.floor(y)), y - np.floor(y)
        for j in range(10):
            x = min(max((j + 0.5) / ratio - 0.5, 0), 4)
            x0, wx = int(np.floor(x)), x - np.floor(x)
            y1, x1 = min(y0 + 1, 5), min(x0 + 1, 4)
            expected[:, i, j] = ((1 - wy) * (1 - wx) * coarse[:, y0, x0]
                                 + (1 - wy) * wx * coarse[:, y0, x1]
                                 + wy * (1 - wx) * coarse[:, y1, x0] + wy * wx * coarse[:, y1, x1])
    np.testing.assert_allclose((fused - fine)[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)
    # Larger than the high-resolution map: cropped; smaller: zero-padded.
    module = layers.UpsampleFusion("deconv", 8)
    for low_size, high_size in (((3, 2), (17, 9)), ((2, 2), (20, 19)), ((1, 1), (8, 8))):
        out = module([np.zeros((1, *high_size, 8), "float32"),
                      np.ones((1, *low_size, 8), "float32")])
        assert tuple(out.shape) == (1, *high_size, 8)
    high, low = np.zeros((1, 20, 19, 8), "float32"), np.ones((1, 2, 2, 8), "float32")
    out = ops.convert_to_numpy(module([high, low]))
    assert np.all(out[:, 16:] == 0) and np.all(out[:, :, 16:] == 0) and out[:, :16, :16].max() > 0


def test_upsample_fusion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`fusion`"):
        layers.UpsampleFusion("align")
    with pytest.raises(ValueError, match="`upsampling_factor`"):
        layers.UpsampleFusion("deconv", 6)
    with pytest.raises(ValueError, match="channels"):
        layers.UpsampleFusion()(
            [np.zeros((1, 4, 4, 8), "float32"), np.zeros((1, 2, 2, 4), "float32")]
        )


def test_align_cm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`context_merge`"):
        layers.AlignCM(context_merge="add")
    with pytest.raises(ValueError, match="`context_bins`"):
        layers.AlignCM(context_bins=0)
    # Each accepted before: 2.9 became 2, "bogus" was saved, 0 meant the input's channels.
    with pytest.raises(ValueError, match=r"`context_bins` must be a positive int; received 2\.9"):
        layers.AlignCM(context_bins=2.9)
    with pytest.raises(ValueError, match="`alignment` must be one of .*received 'bogus'"):
        layers.AlignCM(context="pool", alignment="bogus")
    with pytest.raises(ValueError, match="`context_hidden_channels` must be a positive int"):
        layers.AlignCM(context_hidden_channels=0)
    assert layers.AlignCM(context_bins=3.0).context_bins == 3
    hidden = layers.AlignCM(context_hidden_channels=np.float32(8.0)).context_hidden_channels
    assert hidden == 8 and type(hidden) is int  # 8.0 failed when built
    with pytest.raises(ValueError, match="`context`"):
        layers.AlignCM(context=None)
    with pytest.raises(ValueError, match="`align_fa_offsets`"):
        layers.AlignFA(align_fa_offsets="neither")


# Configs saved before the layers took the model's argument names (0.1 files included).
OLD_CONFIGS = [
    (layers.AlignCM,
     dict(bins=2, hidden_filters=12, merge="concat", offset_filters=4, alignment="official"),
     dict(context_bins=2, context_hidden_channels=12, context_merge="concat", offset_channels=4,
          alignment="official")),
    (layers.AlignFA, dict(offset_filters=4, alignment="official"),
     dict(offset_channels=4, alignment="official")),
    (layers.OffsetHead, dict(filters=4), dict(offset_channels=4)),
    (layers.AlignmentLayer, dict(mode="official"), dict(alignment="official")),
]


@pytest.mark.parametrize("cls,old,new", OLD_CONFIGS, ids=[e[0].__name__ for e in OLD_CONFIGS])
def test_configs_with_the_old_argument_names_load(cls, old, new):
    reference = cls(**new, name="layer")
    config = dict(reference.get_config())
    for key in new:
        del config[key]
    restored = cls.from_config({**config, **old})
    assert restored.get_config() == reference.get_config()
    # Also through Keras' deserialisation, as a .keras file reads a layer.
    serialized = keras.saving.serialize_keras_object(reference)
    for key in new:
        del serialized["config"][key]
    serialized["config"].update(old)
    assert keras.saving.deserialize_keras_object(serialized).get_config() == reference.get_config()
    # The old names are for saved configs: both names at once are an error.
    first_old, first_new = next(iter(old)), next(iter(new))
    with pytest.raises(ValueError, match=f"`{first_old}`.*`{first_new}`"):
        cls.from_config({**reference.get_config(), first_old: old[first_old]})


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
    out = ops.convert_to_numpy(layer(x)) * np.sqrt(1 + 1e-5)
    # PyTorch pads 1 on every side: the top-left tap of output (1, 1) reads
    # input (1, 1); Keras "same" (no top padding here) would read (2, 2).
    assert out.shape == (1, 3, 3, 1)
    np.testing.assert_allclose(out[0, 1, 1, 0], 7.0, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 0, 0], 0.0)


def test_image_normalization_and_padding():
    images = np.full((1, 5, 6, 3), 100, "uint8")
    out = layers.ImageNormalization(mean=(10, 20, 30), std=(2, 4, 5), bgr=True)(images)
    np.testing.assert_allclose(ops.convert_to_numpy(out)[0, 0, 0], [14, 20, 45])
    padded = layers.PadToMultiple(4)(np.ones((1, 5, 6, 3), "float32"))
    assert tuple(padded.shape) == (1, 8, 8, 3)
    assert ops.convert_to_numpy(padded)[0, 5:].sum() == 0
    cropped = layers.CropToReference()([padded, images])
    assert tuple(cropped.shape) == (1, 5, 6, 3)
    with pytest.raises(ValueError, match="std"):
        layers.ImageNormalization(mean=(0, 0, 0), std=(1, 0, 1))
    for multiple in (0, -4, 2.5, True):  # failed when called (a modulo by zero), or padded wrong
        with pytest.raises(ValueError, match="PadToMultiple: `multiple` must be a positive int"):
            layers.PadToMultiple(multiple)
    for bins in (0, -1, 1.5):  # 0 gave an empty (1, 0, 0, C) output
        with pytest.raises(ValueError, match="`bins` must be a positive int"):
            layers.AdaptiveAveragePooling2D(bins)


@pytest.mark.parametrize("dtype, unit_roundoff", [("float32", 2.0**-24), ("bfloat16", 2.0**-8)])
@pytest.mark.parametrize("batched_taps", [False, True])
def test_weighted_tap_sum_within_rounding_of_a_float64_loop(dtype, unit_roundoff, batched_taps):
    # Both forms, on this session's backend, against sum_t w[t, n] * table[index[t, n]] in
    # float64: the weight's cast to the dtype, one product and up to three sums per
    # element, so within 5 u sum_t |w table| (u: the dtype's unit roundoff).
    from alignseg_keras.layers.alignment import _weighted_tap_sum

    rng = np.random.default_rng(3)
    table = ops.cast(rng.standard_normal((50, 7)).astype("float32"), dtype)
    index = rng.integers(0, 50, (4, 40)).astype("int32")
    weights = (rng.random((4, 40)) * (rng.random((4, 40)) > 0.2)).astype("float32")
    rows = ops.convert_to_numpy(ops.cast(table, "float32")).astype("float64")[index]  # (4, N, C)
    terms = weights[..., None].astype("float64") * rows
    got = _weighted_tap_sum(table, ops.convert_to_tensor(index), ops.convert_to_tensor(weights), batched_taps)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    bound = 5 * unit_roundoff * np.abs(terms).sum(0)
    error = np.abs(ops.convert_to_numpy(ops.cast(got, "float32")).astype("float64") - terms.sum(0))
    assert np.all(error <= bound), (error / np.maximum(bound, 1e-30)).max()
    # The bound tells a sum without its last tap from the right one.
    assert np.any(np.abs(terms[:3].sum(0) - terms.sum(0)) > bound)


@pytest.mark.parametrize("training", [True, False, None])
def test_alignment_modules_tell_their_samplers_whether_they_train(monkeypatch, training):
    # The training flag reaches every AlignmentLayer inside AlignFA and AlignCM (Keras
    # passes it down), and the layer hands `batches_taps`' answer to the tap sum.
    from alignseg_keras.layers import alignment
    from alignseg_keras.testing.spies import record_tap_sums

    monkeypatch.setattr(alignment, "batches_taps", lambda flag, dtype: bool(flag) and dtype == "float32")
    seen = record_tap_sums(monkeypatch)
    fine = np.random.rand(1, 6, 6, 4).astype("float32")
    coarse = np.random.rand(1, 3, 3, 4).astype("float32")
    with alignment.portable_sampling():  # the keras.ops sampler on TensorFlow too
        layers.AlignFA(offset_channels=4)([fine, coarse], training=training)
        layers.AlignCM(filters=4, context_bins=2)(fine, training=training)
    assert seen == [bool(training)] * 3


def test_taps_are_batched_only_where_measured():
    # The JAX backend's CPU, while training, float32 or bfloat16 features (docs/benchmarks.md).
    from alignseg_keras.hardware import has_accelerator
    from alignseg_keras.layers.alignment import batches_taps

    on_jax_cpu = keras.backend.backend() == "jax" and has_accelerator() is False
    assert batches_taps(True, "float32") == on_jax_cpu
    assert batches_taps(True, "bfloat16") == on_jax_cpu
    assert not batches_taps(True, "float16") and not batches_taps(True, "float64")
    assert not batches_taps(False, "float32") and not batches_taps(None, "bfloat16")
