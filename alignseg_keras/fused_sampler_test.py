import keras
import numpy as np
import pytest

from alignseg_keras.layers.alignment import bilinear_sample
from alignseg_keras.layers.alignment import gathered_bilinear_sample
from alignseg_keras.layers.alignment import portable_sampling

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's CropAndResize kernel"
)


def numpy_sample(features, y, x):
    """Eq. 2 as a loop: sum over the four taps of F[h, w] (1 - |y - h|)(1 - |x - w|), zeros outside."""
    batch, height, width, channels = features.shape
    out = np.zeros(y.shape + (channels,))
    for b, i, j in np.ndindex(y.shape):
        py, px = y[b, i, j], x[b, i, j]
        for h in (int(np.floor(py)), int(np.floor(py)) + 1):
            for w in (int(np.floor(px)), int(np.floor(px)) + 1):
                if 0 <= h < height and 0 <= w < width:
                    weight = max(0.0, 1 - abs(py - h)) * max(0.0, 1 - abs(px - w))
                    out[b, i, j] += weight * features[b, h, w]
    return out


def random_case(seed, batch=2, size=(7, 9), out_size=(6, 11), channels=5, spread=3.0):
    """Features and positions that reach up to `spread` pixels beyond every border."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, *size, channels)).astype("float32")
    y = rng.uniform(-spread, size[0] - 1 + spread, (batch, *out_size)).astype("float32")
    x = rng.uniform(-spread, size[1] - 1 + spread, (batch, *out_size)).astype("float32")
    # Exact integers, the borders and one pixel beyond them: where taps switch.
    if out_size[0] and out_size[1] >= 4:
        y[0, 0, :4] = [-1.0, 0.0, size[0] - 1.0, float(size[0])]
        x[0, 0, :4] = [-1.0, 0.0, size[1] - 1.0, float(size[1])]
    return features, y, x


def position_tolerance(features, size):
    """The fused pass normalises a position by the padded size and scales it back:
    a few float32 ulps of a position below size + 1, times the largest difference
    between neighbouring values (at most twice the largest |value|)."""
    return 4 * np.spacing(np.float32(max(size) + 1)) * 2 * np.abs(features).max() + 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_forward_matches_eq2_loop(seed):
    features, y, x = random_case(seed)
    expected = numpy_sample(features.astype(np.float64), y.astype(np.float64), x.astype(np.float64))
    fused = keras.ops.convert_to_numpy(bilinear_sample(features, y, x))
    gathered = keras.ops.convert_to_numpy(gathered_bilinear_sample(features, y, x))
    np.testing.assert_allclose(fused, expected, atol=position_tolerance(features, (7, 9)), rtol=0)
    np.testing.assert_allclose(gathered, expected, atol=1e-5, rtol=0)


def test_fused_gradients_equal_the_gathered_gradients():
    import tensorflow as tf

    features, y, x = random_case(3)
    upstream = np.random.default_rng(4).normal(size=(2, 6, 11, 5)).astype("float32")
    grads = {}
    for name, sample in (("fused", bilinear_sample), ("gathered", gathered_bilinear_sample)):
        inputs = [tf.constant(v) for v in (features, y, x)]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            output = sample(*inputs)
        grads[name] = [g.numpy() for g in tape.gradient(output, inputs, output_gradients=upstream)]
    for fused, gathered in zip(grads["fused"], grads["gathered"]):
        np.testing.assert_allclose(fused, gathered, rtol=1e-6, atol=1e-6)
    # Positions beyond the clip range get no gradient.
    outside = (y < -1) | (y > 7)
    assert outside.any() and not grads["fused"][1][outside].any()


def test_bfloat16_features_are_interpolated_in_float32_and_rounded_once():
    import tensorflow as tf

    features, y, x = random_case(5)
    rounded = tf.cast(tf.cast(features, tf.bfloat16), tf.float32).numpy()
    fused = bilinear_sample(tf.cast(features, tf.bfloat16), y, x)
    assert fused.dtype == tf.bfloat16
    exact = numpy_sample(rounded.astype(np.float64), y.astype(np.float64), x.astype(np.float64))
    # One rounding to bfloat16 (8 bits: relative 2**-8) of the result.
    np.testing.assert_allclose(tf.cast(fused, tf.float32).numpy(), exact, atol=2**-8 * np.abs(exact).max() + 1e-6)


def _op_types(function, *args):
    import tensorflow as tf

    specs = [tf.TensorSpec(np.shape(a), tf.float32) for a in args]
    return {op.type for op in tf.function(function).get_concrete_function(*specs).graph.get_operations()}


def test_graph_uses_crop_and_resize_except_under_xla():
    import tensorflow as tf

    features, y, x = random_case(6)
    assert "CropAndResize" in _op_types(bilinear_sample, features, y, x)
    compiled = tf.function(bilinear_sample, jit_compile=True)
    assert "CropAndResize" not in {
        op.type for op in compiled.get_concrete_function(features, y, x).graph.get_operations()
    }
    np.testing.assert_allclose(
        compiled(features, y, x).numpy(),
        gathered_bilinear_sample(features, y, x).numpy(),
        atol=position_tolerance(features, (7, 9)),
    )


def test_portable_sampling_traces_the_gathers_for_exports():
    features, y, x = random_case(8)
    with portable_sampling():
        with portable_sampling():
            assert "CropAndResize" not in _op_types(bilinear_sample, features, y, x)
        assert "CropAndResize" not in _op_types(bilinear_sample, features, y, x)
    assert "CropAndResize" in _op_types(bilinear_sample, features, y, x)


@pytest.mark.parametrize("size,out_size", [((1, 1), (3, 2)), ((1, 6), (1, 1)), ((5, 4), (0, 3))])
def test_degenerate_sizes(size, out_size):
    features, y, x = random_case(7, batch=1, size=size, out_size=out_size, spread=1.5)
    fused = keras.ops.convert_to_numpy(bilinear_sample(features, y, x))
    expected = numpy_sample(features.astype(np.float64), y.astype(np.float64), x.astype(np.float64))
    assert fused.shape == (1, *out_size, 5)
    np.testing.assert_allclose(fused, expected, atol=position_tolerance(features, size))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_non_finite_positions_sample_as_the_gathered_form(dtype):
    import tensorflow as tf

    features, y, x = random_case(4)
    features = tf.cast(features, dtype)
    y[0, 1, :4] = [np.nan, np.inf, -np.inf, 2.0]
    x[0, 1, :4] = [1.0, 1.0, 1.0, np.nan]
    x[1, 2, 3] = -np.inf
    fused = tf.function(bilinear_sample)(features, y, x)
    gathered = gathered_bilinear_sample(features, y, x)
    nan_pixels = np.zeros(y.shape, bool)
    nan_pixels[0, 1, [0, 3]] = True
    # NaN positions give NaN in every channel (CropAndResize itself would refuse them);
    # infinite ones the map's edge; both forms agree everywhere.
    for sampled in (fused, gathered):
        sampled = np.asarray(tf.cast(sampled, "float32"))
        np.testing.assert_array_equal(np.isnan(sampled).all(-1), nan_pixels)
        assert not np.isnan(sampled[~nan_pixels]).any()
    # The gathered form rounds each of its 4 products and 3 sums to bfloat16 (2^-9 relative).
    atol = 1e-5 if dtype == "float32" else 8 * 2.0**-9 * float(tf.reduce_max(tf.abs(tf.cast(features, "float32"))))
    np.testing.assert_allclose(np.asarray(tf.cast(fused, "float32")),
                               np.asarray(tf.cast(gathered, "float32")), atol=atol, rtol=0)


def test_a_training_step_through_nan_positions_gives_a_nan_loss_not_an_error():
    import tensorflow as tf

    features, y, x = random_case(5)
    y[0, 0, 0] = np.nan

    @tf.function
    def loss_and_gradient(features):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(bilinear_sample(features, y, x))
        return loss, tape.gradient(loss, features)

    loss, gradient = loss_and_gradient(tf.constant(features))
    assert np.isnan(loss.numpy())
    assert gradient.shape == features.shape
