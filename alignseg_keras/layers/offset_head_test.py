"""The offset heads' split 1x1 convolution (issue #15 item 2): AlignFA and AlignCM compute
`W [A, up(F)]` as `W_A A + up(W_F F)`; here against the concatenated form they had.

Tolerances come from float32 rounding (u = 2^-24, gamma_n = n u / (1 - n u)), not from trial:

- Hidden 1x1 convolution (the only computation that changed). Each form is a dot product
  of n = 2C terms plus the bilinear interpolation (two 1-D lerps, each off by at most
  4u times its two neighbours' magnitudes). Both forms use the same float32 interpolation
  weights (the same `resize_bilinear` at the same sizes), so they differ only by
  rounding, and each is within gamma_{2C+16} * S of the exact value of the same formula,
  `S = |W_A| |A| + |W_F| max|F|` (max per channel over the map; 16 extra terms for the
  interpolation). Tolerance: `2 gamma_{2C+16} S`, elementwise.
- Offsets and the layer's output, downstream of it, by Lipschitz constants of the
  (identical) layers that follow, from the actual weights: BatchNorm `|gamma| / sigma`
  (inference) or `|gamma| (2 + max|x_hat|) / sigma` (training: the batch mean and
  standard deviation move by at most the perturbation), ReLU 1, the 3x3 convolution
  `max_o sum |K3[..., o]|` plus its own rounding on both sides
  (`2 gamma_{9 O} sum|K3| |h|`), the alignment at most `2 max|feature|` per offset
  channel (a bilinear sample moves by at most the largest neighbour difference per unit
  of position; AlignFA samples at its own size, so the scale is at most 1), and
  `64 u max|output|` for the rounding of those layers on both sides.
- Gradients of `sum(g * conv)` (kernel, both inputs): sums over the batch's pixels, of
  `B H W` terms for the kernel and `O + 4 (H/h + 2)(W/w + 2)` for the low-resolution
  input, bounded the same way with absolute values.
"""

import keras
import numpy as np
import pytest
from keras import ops

from alignseg_keras import layers
from alignseg_keras.layers.offset_head import offsets_of_concat
from alignseg_keras.layers.offset_head import pointwise_conv_of_concat
from alignseg_keras.testing.references import align_cm_concat_reference
from alignseg_keras.testing.references import align_fa_concat_reference
from alignseg_keras.testing.references import offsets_of_concat_reference

U32 = 2.0**-24
UBF16 = 2.0**-8
# (high-resolution size, low-resolution size): x2, x4, x8, odd, equal.
SIZES = [
    ((16, 20), (8, 10)),
    ((32, 24), (8, 6)),
    ((32, 40), (4, 5)),
    ((17, 23), (9, 12)),
    ((6, 7), (6, 7)),
]
SIZE_IDS = ["x2", "x4", "x8", "17x23_from_9x12", "same"]
CHANNELS = 8
OFFSET_CHANNELS = 6


def gamma(n, u=U32):
    return n * u / (1.0 - n * u)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _inputs(high_size, low_size, seed=0, batch=2, channels=CHANNELS):
    rng = np.random.default_rng(seed)
    high = rng.normal(size=(batch, *high_size, channels)).astype("float32")
    low = rng.normal(size=(batch, *low_size, channels)).astype("float32")
    return high, low


def _randomize_heads(heads, seed=1):
    """Random BatchNorm statistics and a non-zero 3x3 kernel, so offsets are ~1 pixel."""
    rng = np.random.default_rng(seed)
    for head in heads:
        norm = head.hidden.norm
        width = norm.gamma.shape[0]
        norm.gamma.assign(rng.uniform(0.5, 1.5, width).astype("float32"))
        norm.beta.assign(rng.normal(0.0, 0.5, width).astype("float32"))
        norm.moving_mean.assign(rng.normal(0.0, 0.5, width).astype("float32"))
        norm.moving_variance.assign(rng.uniform(1.0, 4.0, width).astype("float32"))
        shape = head.offsets.kernel.shape
        head.offsets.kernel.assign(rng.normal(0.0, 0.1, shape).astype("float32"))


def _hidden_bound(high, low, kernel, u=U32):
    """Elementwise bound on |split - concatenated| of the hidden 1x1 convolution."""
    channels = high.shape[-1]
    weights = np.abs(np.asarray(kernel, np.float64)[0, 0])
    low_max = np.abs(np.asarray(low, np.float64)).max(axis=(1, 2), keepdims=True)
    magnitude = np.abs(np.asarray(high, np.float64)) @ weights[:channels]
    magnitude = magnitude + low_max @ weights[channels:]
    return 2.0 * gamma(2 * channels + 16, u) * magnitude


def _exact_hidden(high, low, kernel):
    upsampled = _np(layers.resize_bilinear(low, high.shape[1:3]))
    concat = np.concatenate([np.asarray(high, np.float64), upsampled], axis=-1)
    return concat @ np.asarray(kernel, np.float64)[0, 0]


def _offset_bound(head, high, low, training, u=U32):
    """Bound on the offsets' difference, from the hidden bound through BN, ReLU, 3x3 conv."""
    kernel = _np(head.hidden.conv.kernel)
    hidden_error = _hidden_bound(high, low, kernel, u).max(axis=(0, 1, 2))
    norm = head.hidden.norm
    gain = _np(norm.gamma)
    if training:
        hidden = _exact_hidden(high, low, kernel)
        sigma = np.sqrt(hidden.var(axis=(0, 1, 2)) + norm.epsilon)
        normalized = np.abs(hidden - hidden.mean(axis=(0, 1, 2))) / sigma
        lipschitz = np.abs(gain) * (2.0 + normalized.max(axis=(0, 1, 2))) / sigma
        activated = np.abs(gain) * normalized.max(axis=(0, 1, 2)) + np.abs(_np(norm.beta))
    else:
        sigma = np.sqrt(_np(norm.moving_variance) + norm.epsilon)
        lipschitz = np.abs(gain) / sigma
        hidden = _exact_hidden(high, low, kernel)
        normalized = np.abs(hidden - _np(norm.moving_mean)).max(axis=(0, 1, 2)) / sigma
        activated = np.abs(gain) * normalized + np.abs(_np(norm.beta))
    offsets_kernel = np.abs(_np(head.offsets.kernel))  # (3, 3, O, 2)
    propagated = np.einsum("hwoc,o->c", offsets_kernel, lipschitz * hidden_error)
    rounding = 2.0 * gamma(9 * kernel.shape[-1], u) * np.einsum(
        "hwoc,o->c", offsets_kernel, activated
    )
    return float((propagated + rounding).max())


def _gradients(function, arguments):
    """Gradients of `function(*arguments)` (a scalar) w.r.t. every argument."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in arguments]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = function(*tensors)
        return [_np(g) for g in tape.gradient(value, tensors)]
    if keras.backend.backend() == "jax":
        import jax

        grads = jax.grad(function, argnums=tuple(range(len(arguments))))(*arguments)
        return [_np(g) for g in grads]
    pytest.skip("gradients are checked on TensorFlow and JAX")


def _upsampling_transpose(low, values):
    """up^T(values) at low's size: up's weights are non-negative, so of |values| it sums
    the magnitudes that meet at each low-resolution pixel."""
    values = values.astype("float32")
    size = values.shape[1:3]
    (result,) = _gradients(
        lambda z: ops.sum(layers.resize_bilinear(z, size) * values), [low]
    )
    return result


def _concat_conv(high, low, kernel):
    upsampled = layers.resize_bilinear(low, (ops.shape(high)[1], ops.shape(high)[2]))
    return ops.conv(ops.concatenate([high, upsampled], axis=-1), kernel)


@pytest.mark.parametrize("high_size,low_size", SIZES, ids=SIZE_IDS)
def test_split_pointwise_conv_equals_the_concatenated_one(high_size, low_size):
    high, low = _inputs(high_size, low_size)
    rng = np.random.default_rng(2)
    kernel = rng.normal(0.0, 0.3, (1, 1, 2 * CHANNELS, 10)).astype("float32")
    split = _np(pointwise_conv_of_concat(high, low, kernel))
    concatenated = _np(_concat_conv(high, low, kernel))
    bound = _hidden_bound(high, low, kernel)
    assert split.shape == concatenated.shape == (2, *high_size, 10)
    assert np.all(np.abs(split - concatenated) <= bound)
    # Also against the formula in float64 (float32 interpolation weights are shared).
    assert np.all(np.abs(split - _exact_hidden(high, low, kernel)) <= bound)


@pytest.mark.parametrize("high_size,low_size", SIZES[1:4], ids=SIZE_IDS[1:4])
def test_split_pointwise_conv_gradients_equal_the_concatenated_ones(high_size, low_size):
    high, low = _inputs(high_size, low_size)
    rng = np.random.default_rng(3)
    kernel = rng.normal(0.0, 0.3, (1, 1, 2 * CHANNELS, 10)).astype("float32")
    cotangent = rng.normal(size=(2, *high_size, 10)).astype("float32")

    def loss(form):
        return lambda h, l, k: ops.sum(form(h, l, k) * cotangent)

    split = _gradients(loss(pointwise_conv_of_concat), [high, low, kernel])
    concatenated = _gradients(loss(_concat_conv), [high, low, kernel])
    # Bounds from absolute values (see the module docstring).
    weights = np.abs(kernel[0, 0]).astype(np.float64)
    g = np.abs(cotangent).astype(np.float64)
    low_max = np.abs(low).max()
    pixels = 2 * high_size[0] * high_size[1]
    spread = 4 * (high_size[0] // low_size[0] + 2) * (high_size[1] // low_size[1] + 2)
    x = np.concatenate([np.abs(high), np.full(high.shape, low_max)], -1).astype(np.float64)
    bounds = [
        2 * gamma(10) * g @ weights[:CHANNELS].T,
        2 * gamma(10 + spread + 16) * _upsampling_transpose(low, g @ weights[CHANNELS:].T),
        2 * gamma(pixels + 16) * np.einsum("bhwi,bhwo->io", x, g)[None, None],
    ]
    for name, a, b, bound in zip(("high", "low", "kernel"), split, concatenated, bounds):
        assert a.shape == b.shape, name
        assert np.all(np.abs(a - b) <= bound), name


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("high_size,low_size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("side", ["both", "low_res", "high_res"])
def test_align_fa_equals_the_concatenated_form(side, high_size, low_size, training):
    high, low = _inputs(high_size, low_size)
    alignment = "official" if side == "both" and high_size == (17, 23) else "standard"
    module = layers.AlignFA(
        offset_channels=OFFSET_CHANNELS, alignment=alignment, align_fa_offsets=side
    )
    module.build([high.shape, low.shape])
    heads = module._offset_heads()
    _randomize_heads(heads)
    expected, expected_offsets = align_fa_concat_reference(
        module, [high, low], training=training, return_offsets=True
    )
    out, offsets = module([high, low], training=training, return_offsets=True)
    offsets, expected_offsets = _np(offsets), _np(expected_offsets)
    assert offsets.shape == expected_offsets.shape == (2, *high_size, 2 * len(heads))
    assert np.abs(expected_offsets).max() > 0.1  # the offsets do move the samples
    offset_bounds = [_offset_bound(head, high, low, training) for head in heads]
    offset_bounds = [b + 64 * U32 * np.abs(expected_offsets).max() for b in offset_bounds]
    for index, bound in enumerate(offset_bounds):
        difference = np.abs(offsets - expected_offsets)[..., 2 * index : 2 * index + 2]
        assert difference.max() <= bound, (index, difference.max(), bound)
    # The alignment moves by at most 2 max|feature| per offset unit and channel.
    features = {"low_res": _np(layers.resize_bilinear(low, high_size)), "high_res": high}
    sides = [s for s in ("low_res", "high_res") if side in ("both", s)]
    bound = sum(4 * np.abs(features[s]).max() * b for s, b in zip(sides, offset_bounds))
    bound += 64 * U32 * np.abs(_np(expected)).max()
    np.testing.assert_allclose(_np(out), _np(expected), rtol=0, atol=bound)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_offsets_of_concat_equals_each_head_on_the_concatenation(training):
    high, low = _inputs((17, 23), (9, 12))
    module = layers.AlignFA(offset_channels=OFFSET_CHANNELS)
    module.build([high.shape, low.shape])
    heads = module._offset_heads()
    _randomize_heads(heads)
    split = offsets_of_concat(heads, high, low, training=training)
    expected = offsets_of_concat_reference(heads, high, low, training=training)
    for head, a, b in zip(heads, split, expected):
        bound = _offset_bound(head, high, low, training) + 64 * U32 * np.abs(_np(b)).max()
        np.testing.assert_allclose(_np(a), _np(b), rtol=0, atol=bound)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_align_cm_equals_the_concatenated_form(training):
    x = np.random.default_rng(4).normal(size=(2, 9, 11, 12)).astype("float32")
    module = layers.AlignCM(filters=8, context_bins=3, context_hidden_channels=12,
                            offset_channels=OFFSET_CHANNELS, context_merge="concat")
    module.build(x.shape)
    _randomize_heads([module.offset_head])
    expected, expected_offsets = align_cm_concat_reference(module, x, training=training)
    out, offsets = module(x, training=training, return_offsets=True)
    # The head reads [local, up(context)]: the bounds are those of AlignFA's heads on it.
    local = module.local_project(module.local_reduce(x, training=training), training=training)
    context = module.context_project(
        module.context_reduce(module.pool(x), training=training), training=training
    )
    local, context = _np(local).astype("float32"), _np(context).astype("float32")
    offset_bound = _offset_bound(module.offset_head, local, context, training)
    offset_bound += 64 * U32 * np.abs(_np(expected_offsets)).max()
    np.testing.assert_allclose(_np(offsets), _np(expected_offsets), rtol=0, atol=offset_bound)
    # AlignCM samples the 3x3 context at the local size: scale (3 - 1) / (9 - 1) < 1.
    bound = 4 * np.abs(context).max() * offset_bound + 64 * U32 * np.abs(_np(expected)).max()
    np.testing.assert_allclose(_np(out), _np(expected), rtol=0, atol=bound)


def test_align_fa_gradients_equal_the_concatenated_forms():
    """Training-mode gradients w.r.t. every weight and both inputs, TensorFlow or JAX."""
    high, low = _inputs((17, 23), (9, 12))
    module = layers.AlignFA(offset_channels=OFFSET_CHANNELS)
    module.build([high.shape, low.shape])
    _randomize_heads(module._offset_heads())
    cotangent = np.random.default_rng(5).normal(size=(2, 17, 23, CHANNELS)).astype("float32")
    variables = module.trainable_variables

    def split(h, l):
        return module([h, l], training=True)

    def concatenated(h, l):
        return align_fa_concat_reference(module, [h, l], training=True)

    values = [_np(v).astype("float32") for v in variables]
    if keras.backend.backend() == "jax":
        import jax

        def stateless(form_name):
            def loss(h, l, *trainable):
                non_trainable = [v.value for v in module.non_trainable_variables]
                mapping = list(zip(variables, trainable)) + list(
                    zip(module.non_trainable_variables, non_trainable)
                )
                with keras.StatelessScope(state_mapping=mapping):
                    form = split if form_name == "split" else concatenated
                    return ops.sum(form(h, l) * cotangent)

            return loss

        grads = {
            name: [_np(g) for g in jax.grad(stateless(name), argnums=tuple(
                range(2 + len(values))))(high, low, *values)]
            for name in ("split", "concatenated")
        }
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        grads = {}
        for name, form in (("split", split), ("concatenated", concatenated)):
            h, l = tf.convert_to_tensor(high), tf.convert_to_tensor(low)
            with tf.GradientTape() as tape:
                tape.watch([h, l])
                value = ops.sum(form(h, l) * cotangent)
            grads[name] = [_np(g) for g in tape.gradient(value, [h, l, *variables])]
    else:
        pytest.skip("gradients are checked on TensorFlow and JAX")
    names = ["high", "low"] + [v.path for v in variables]
    assert len(grads["split"]) == len(names)
    for name, a, b in zip(names, grads["split"], grads["concatenated"]):
        # Through BN (training), ReLU, the 3x3 conv and the sampler the forward's
        # rounding bound grows by the Lipschitz constants above; 2^-12 of the largest
        # gradient of each tensor holds them with room (measured: at most 2e-6 of it, 120x less).
        scale = np.abs(b).max()
        assert scale > 0, name
        np.testing.assert_allclose(a, b, rtol=0, atol=2.0**-12 * scale, err_msg=name)


EXPECTED_WEIGHTS = {
    "both": [
        ("low_resolution_offsets/hidden/conv/kernel", (1, 1, 16, 6)),
        ("low_resolution_offsets/hidden/norm/gamma", (6,)),
        ("low_resolution_offsets/hidden/norm/beta", (6,)),
        ("low_resolution_offsets/hidden/norm/moving_mean", (6,)),
        ("low_resolution_offsets/hidden/norm/moving_variance", (6,)),
        ("low_resolution_offsets/offsets/kernel", (3, 3, 6, 2)),
        ("high_resolution_offsets/hidden/conv/kernel", (1, 1, 16, 6)),
        ("high_resolution_offsets/hidden/norm/gamma", (6,)),
        ("high_resolution_offsets/hidden/norm/beta", (6,)),
        ("high_resolution_offsets/hidden/norm/moving_mean", (6,)),
        ("high_resolution_offsets/hidden/norm/moving_variance", (6,)),
        ("high_resolution_offsets/offsets/kernel", (3, 3, 6, 2)),
    ],
}
EXPECTED_WEIGHTS["low_res"] = EXPECTED_WEIGHTS["both"][:6]
EXPECTED_WEIGHTS["high_res"] = EXPECTED_WEIGHTS["both"][6:]


@pytest.mark.parametrize("side", ["both", "low_res", "high_res"])
def test_align_fa_weights_are_unchanged(side):
    """The same variables, paths and shapes as the concatenated form (every saved file's)."""
    high, low = _inputs((16, 20), (8, 10))
    module = layers.AlignFA(offset_channels=6, align_fa_offsets=side, name="fa")
    module([high, low], training=True)
    module([high, low])
    expected = [(f"fa/{path}", shape) for path, shape in EXPECTED_WEIGHTS[side]]
    assert [(w.path, tuple(w.shape)) for w in module.weights] == expected
    assert len(module.trainable_weights) == 4 * len(module._offset_heads())


def test_align_cm_weights_are_unchanged():
    module = layers.AlignCM(filters=8, context_bins=3, context_hidden_channels=12, name="cm")
    module(np.zeros((2, 7, 9, 12), "float32"), training=True)
    paths = [(w.path, tuple(w.shape)) for w in module.weights]
    assert paths[:6] == [
        ("cm/offset_head/hidden/conv/kernel", (1, 1, 16, 256)),
        ("cm/offset_head/hidden/norm/gamma", (256,)),
        ("cm/offset_head/hidden/norm/beta", (256,)),
        ("cm/offset_head/hidden/norm/moving_mean", (256,)),
        ("cm/offset_head/hidden/norm/moving_variance", (256,)),
        ("cm/offset_head/offsets/kernel", (3, 3, 256, 2)),
    ]
    assert len(paths) == 26


@pytest.mark.parametrize("side", ["both", "high_res"])
def test_align_fa_mixed_bfloat16(side):
    """Under mixed_bfloat16 the kernel slices are cast as Conv2D casts its kernel: the
    split form computes in bfloat16, its weights stay float32, and it matches the
    concatenated form within the same bound with bfloat16's u = 2^-8."""
    high, low = _inputs((17, 23), (9, 12))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        module = layers.AlignFA(offset_channels=OFFSET_CHANNELS, align_fa_offsets=side)
        module.build([high.shape, low.shape])
        heads = module._offset_heads()
        _randomize_heads(heads)
        out, offsets = module([high, low], return_offsets=True)
        expected_out, expected = align_fa_concat_reference(
            module, [high, low], return_offsets=True
        )
        split_hidden = offsets_of_concat(heads, high, low)
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(w.dtype == "float32" for w in module.weights)
    assert ops.convert_to_numpy(out).dtype == "bfloat16"
    assert all(ops.convert_to_numpy(o).dtype == "bfloat16" for o in split_hidden)
    # Inputs and kernels rounded to bfloat16 identically on both sides: the bound of
    # the float32 test with u = 2^-8 (each result rounded to bfloat16 once more: + 2u).
    bounds = [_offset_bound(head, high, low, False, UBF16) for head in heads]
    for index, bound in enumerate(bounds):
        a = _np(offsets)[..., 2 * index : 2 * index + 2]
        b = _np(expected)[..., 2 * index : 2 * index + 2]
        assert np.abs(a - b).max() <= bound + 4 * UBF16 * np.abs(b).max()
    assert np.all(np.isfinite(_np(out)))
    assert np.abs(_np(out) - _np(expected_out)).max() <= 0.1 * np.abs(_np(expected_out)).max()
