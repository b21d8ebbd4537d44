import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.layers.alignment import AlignmentLayer
from alignseg_keras.layers.alignment import BilinearResize
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.alignment import separable_resize_bilinear
from alignseg_keras.testing.references import ALIGNMENT_SIZES as SIZES
from alignseg_keras.testing.references import reference_alignment


@pytest.mark.parametrize("mode", ["standard", "official"])
@pytest.mark.parametrize("in_h,in_w,out_h,out_w", SIZES)
def test_matches_reference_loop(mode, in_h, in_w, out_h, out_w):
    rng = np.random.default_rng(in_h * 100 + out_w)
    features = rng.normal(size=(2, in_h, in_w, 3)).astype("float32")
    # Offsets reach well outside the map, to test the zero padding.
    offsets = rng.uniform(-3, 3, size=(2, out_h, out_w, 2)).astype("float32")
    result = AlignmentLayer(mode)([features, offsets])
    expected = reference_alignment(features, offsets, mode)
    np.testing.assert_allclose(np.asarray(result), expected, atol=1e-5)


def test_identity_at_zero_offsets_when_sizes_match():
    features = np.random.default_rng(0).normal(size=(2, 6, 9, 4)).astype("float32")
    offsets = np.zeros((2, 6, 9, 2), "float32")
    result = AlignmentLayer("standard")([features, offsets])
    np.testing.assert_allclose(np.asarray(result), features, atol=1e-6)


def test_official_mode_is_not_identity_at_zero_offsets():
    features = np.random.default_rng(0).normal(size=(1, 6, 6, 2)).astype("float32")
    result = AlignmentLayer("official")([features, np.zeros((1, 6, 6, 2), "float32")])
    assert not np.allclose(np.asarray(result), features, atol=1e-3)


RESIZES = {"fused": resize_bilinear, "separable": separable_resize_bilinear}


@pytest.mark.parametrize("resize", sorted(RESIZES))
@pytest.mark.parametrize("in_h,in_w,out_h,out_w", SIZES)
def test_align_corners_resize_matches_reference_loop(resize, in_h, in_w, out_h, out_w):
    # Eq. 2's loop at zero offsets (standard mode) is align_corners=True resizing,
    # degenerate sizes included.
    features = np.random.default_rng(in_h * 10 + out_w).normal(size=(2, in_h, in_w, 5))
    features = features.astype("float32")
    resized = RESIZES[resize](features, (out_h, out_w), align_corners=True)
    expected = reference_alignment(features, np.zeros((2, out_h, out_w, 2)), "standard")
    np.testing.assert_allclose(np.asarray(resized), expected, atol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_size,out_size", [((4, 6), (9, 11)), ((9, 8), (4, 3)), ((5, 5), (1, 1))])
def test_resize_matches_pytorch_interpolate(align_corners, in_size, out_size):
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(2).normal(size=(2, *in_size, 3)).astype("float32")
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2), size=out_size, mode="bilinear",
        align_corners=align_corners,
    ).permute(0, 2, 3, 1).numpy()
    for resize in RESIZES.values():
        resized = resize(images, out_size, align_corners=align_corners)
        np.testing.assert_allclose(np.asarray(resized), expected, atol=1e-5)


def _resize_graph_ops(images, align_corners=True):
    graph = tf.function(lambda x: resize_bilinear(x, (7, 9), align_corners)).get_concrete_function(
        tf.TensorSpec(images.shape, images.dtype)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
def test_fused_kernel_resizes_tensorflow_floats(dtype):
    images = tf.zeros((1, 3, 4, 2), dtype)
    assert "ResizeBilinear" in _resize_graph_ops(images)
    assert resize_bilinear(images, (7, 9)).dtype == dtype
    # float64 would lose precision in the kernel's float32 arithmetic.
    assert "ResizeBilinear" not in _resize_graph_ops(tf.zeros((1, 3, 4, 2), tf.float64))


@pytest.mark.parametrize("align_corners", [True, False])
def test_fused_and_separable_gradients_agree(align_corners):
    rng = np.random.default_rng(4)
    images = tf.constant(rng.normal(size=(2, 5, 6, 3)), tf.float32)
    weights = tf.constant(rng.normal(size=(2, 11, 8, 3)), tf.float32)
    gradients = []
    for resize in RESIZES.values():
        with tf.GradientTape() as tape:
            tape.watch(images)
            value = tf.reduce_sum(resize(images, (11, 8), align_corners=align_corners) * weights)
        gradients.append(tape.gradient(value, images).numpy())
    # Each input pixel collects at most a few products of magnitude ~3.
    np.testing.assert_allclose(gradients[0], gradients[1], atol=1e-5)


def test_bfloat16_resize_rounds_once():
    # The kernel interpolates in float32: a bfloat16 result is the float32 one
    # rounded to bfloat16 (a relative error of at most 2**-8).
    images = np.random.default_rng(5).normal(size=(1, 6, 7, 4)).astype("float32")
    as_bfloat16 = tf.cast(tf.cast(images, tf.bfloat16), tf.float32).numpy()
    expected = np.asarray(separable_resize_bilinear(as_bfloat16, (13, 5)))
    result = tf.cast(resize_bilinear(tf.cast(images, tf.bfloat16), (13, 5)), tf.float32).numpy()
    np.testing.assert_allclose(result, expected, rtol=2.0**-8, atol=1e-6)


def test_bilinear_resize_layer_takes_reference_size():
    layer = BilinearResize()
    out = layer([np.ones((1, 4, 5, 2), "float32"), np.zeros((1, 13, 7, 3), "float32")])
    assert tuple(out.shape) == (1, 13, 7, 2)
    np.testing.assert_allclose(np.asarray(out), 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["standard", "official"])
def test_gradients_match_finite_differences(mode):
    rng = np.random.default_rng(3)
    features = tf.constant(rng.normal(size=(1, 4, 5, 2)), tf.float64)
    # Offsets away from integer sampling positions, where Eq. 2 is not differentiable.
    offsets = tf.constant(rng.uniform(-1.2, 1.2, size=(1, 3, 6, 2)) + 0.013, tf.float64)
    weights = tf.constant(rng.normal(size=(1, 3, 6, 2)), tf.float64)
    layer = AlignmentLayer(mode, dtype="float64")

    def objective(f, o):
        return tf.reduce_sum(tf.cast(layer([f, o]), tf.float64) * weights)

    with tf.GradientTape() as tape:
        tape.watch([features, offsets])
        value = objective(features, offsets)
    grad_f, grad_o = tape.gradient(value, [features, offsets])
    # Sampling positions are float32 by design; the objective is piecewise
    # linear in each offset, so a larger step inside a cell stays exact.
    eps = 1e-3
    for tensor, grad, index in (
        (features, grad_f, (0, 2, 3, 1)),
        (features, grad_f, (0, 0, 0, 0)),
        (offsets, grad_o, (0, 1, 2, 0)),
        (offsets, grad_o, (0, 2, 4, 1)),
    ):
        delta = np.zeros(tensor.shape)
        delta[index] = eps
        if tensor is features:
            plus, minus = objective(features + delta, offsets), objective(features - delta, offsets)
        else:
            plus, minus = objective(features, offsets + delta), objective(features, offsets - delta)
        numeric = (plus - minus).numpy() / (2 * eps)
        np.testing.assert_allclose(grad.numpy()[index], numeric, rtol=1e-3, atol=1e-5)
    assert np.abs(grad_o.numpy()).sum() > 0


def test_coordinates_stay_float32_under_mixed_precision():
    # Large maps: float16 positions would be off by whole pixels (spacing 0.5 above 1024).
    features = np.arange(1500, dtype="float32").reshape(1, 1, 1500, 1)
    offsets = np.zeros((1, 1, 1500, 2), "float32")
    offsets[..., 1] = 0.25  # horizontal
    layer = AlignmentLayer("standard", dtype="mixed_float16")
    result = np.asarray(layer([features, offsets])).astype("float32")[0, 0, :-1, 0]
    expected = np.arange(1499) + 0.25
    # float16 outputs hold values above 1024 to within 1.
    np.testing.assert_allclose(result, expected, atol=1.0)
    np.testing.assert_allclose(result[:500], expected[:500], atol=0.25)


def test_config_round_trip_and_bad_mode():
    layer = AlignmentLayer("official", name="u")
    restored = AlignmentLayer.from_config(layer.get_config())
    assert restored.alignment == "official" and restored.name == "u"
    with pytest.raises(ValueError, match="`alignment`"):
        AlignmentLayer("nearest")


@pytest.mark.parametrize("offsets_shape, problem", [
    ((2, 8, 8, 1), "offsets need 2 channels"),
    ((2, 8, 8, 3), "offsets need 2 channels"),  # the third channel was silently unused
    ((1, 8, 8, 2), "their batch sizes differ"),
    ((2, 8, 8), "both must have rank 4"),
])
def test_offsets_it_cannot_sample_are_named(offsets_shape, problem):
    features = np.zeros((2, 4, 4, 3), "float32")
    message = rf"AlignmentLayer 'u' .*received features \(2, 4, 4, 3\) and offsets .*: {problem}"
    layer = AlignmentLayer(name="u")
    with pytest.raises(ValueError, match=message):
        layer([features, np.zeros(offsets_shape, "float32")])
    with pytest.raises(ValueError, match=message):
        layer.compute_output_shape([features.shape, offsets_shape])


def test_dynamic_shapes_in_a_tf_function():
    layer = AlignmentLayer()

    @tf.function(input_signature=[
        tf.TensorSpec((None, None, None, 3)), tf.TensorSpec((None, None, None, 2))
    ])
    def run(features, offsets):
        return layer([features, offsets])

    out = run(tf.ones((2, 5, 6, 3)), tf.zeros((2, 9, 4, 2)))
    assert tuple(out.shape) == (2, 9, 4, 3)
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_feature_gradient_sums_in_float32(dtype):
    # 32x32 output pixels all sample (1.25, 2.5) of a 4x4 map: each of the 4 taps
    # receives 1024 terms. Summed in the features' type they stall once a term is
    # below half the sum's spacing (a bfloat16 sum of 0.375s stops at 128).
    from alignseg_keras.layers.alignment import bilinear_sample_gradient

    features = tf.ones((1, 4, 4, 1), dtype)
    y, x = tf.fill((1, 32, 32), 1.25), tf.fill((1, 32, 32), 2.5)
    table_grad, _, _ = bilinear_sample_gradient(features, y, x, tf.ones((1, 32, 32, 1), dtype))
    assert table_grad.dtype == dtype
    expected = np.zeros((4, 4), "float32")
    expected[1:3, 2:4] = 1024 * np.outer([0.75, 0.25], [0.5, 0.5])  # (1 - wy, wy) x (1 - wx, wx)
    np.testing.assert_array_equal(np.asarray(table_grad, "float32")[0, :, :, 0], expected)
