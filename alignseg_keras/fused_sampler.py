"""TensorFlow's CropAndResize kernel as the forward pass of `bilinear_sample` (TF only).

`bilinear_sample` in `keras.ops` (`gathered_bilinear_sample`) gathers four rows of
channels per output pixel and sums them weighted: four gathers, four
multiplications and three additions, each a pass over the output. TensorFlow has
no kernel that samples a feature map at per-pixel positions, but `CropAndResize`
with one 1x1 box per output pixel is one: a box whose corners are both the point
`(y, x)` (normalised by the image size minus one) gives the bilinear
interpolation of the four pixels around it, in one multi-threaded pass.

Zeros outside the map: the kernel clamps taps into the image and returns the
extrapolation value for points outside it, where Eq. 2 reads zeros for each
tap outside. With the map padded by one row and column of zeros on each side,
both agree: a position in `[-1, size]` (`bilinear_sample` clips to it) lies
inside the padded map, and its taps outside the original map read the padding.

The kernel interpolates in float32 and returns float32 (bfloat16 inputs are
cast to float32 first; the result is cast back). The gradient stays the
hand-written one of `layers.alignment` (`bilinear_sample_gradient`), so
training computes what it did; the forward value differs from the gathered
form by float32 rounding of the positions (normalising and scaling back), about
1e-7 of the position.

NaN positions (diverged offsets) give NaN samples and infinite ones the map's
edge, as in the gathered form; `CropAndResize` itself refuses non-finite boxes.

XLA has no kernel for `CropAndResize`; graphs that XLA compiles keep the
`keras.ops` form (`fused_resize.xla_compiles_this_graph`).
"""

import tensorflow as tf

from alignseg_keras.fused_resize import xla_compiles_this_graph

# Feature types the fused forward pass takes (float64 stays on the keras.ops path).
FUSED_DTYPES = ("float16", "bfloat16", "float32")


def fused_sampler_applies(dtype):
    """Whether `fused_bilinear_sample` may sample features of `dtype` here."""
    return dtype in FUSED_DTYPES and not xla_compiles_this_graph()


def fused_bilinear_sample(features, y, x, gradient):
    """`bilinear_sample(features, y, x)` computed by `CropAndResize`.

    Args:
        features: `(B, H, W, C)` in one of `FUSED_DTYPES`.
        y, x: float32 `(B, H_out, W_out)` positions in input pixels.
        gradient: `gradient(features, y, x, upstream)` returning the gradients
            with respect to `features`, `y` and `x`.

    Returns:
        `(B, H_out, W_out, C)` in the dtype of `features`.
    """

    @tf.custom_gradient
    def sample(features, y, x):
        def grad(upstream):
            return gradient(features, y, x, upstream)

        return crop_and_resize_sample(features, y, x), grad

    return sample(features, y, x)


def crop_and_resize_sample(features, y, x):
    """The forward pass: one 1x1 `CropAndResize` box per output pixel."""
    shape = tf.shape(features)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    out_shape = tf.shape(y)
    padded = tf.pad(tf.cast(features, tf.float32), [[0, 0], [1, 1], [1, 1], [0, 0]])
    # The padded map's corner pixels are at 0 and size + 1.
    height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    y = tf.clip_by_value(y, -1.0, height_f)  # infinities become the edges, NaN stays
    x = tf.clip_by_value(x, -1.0, width_f)
    nan_position = tf.math.logical_or(tf.math.is_nan(y), tf.math.is_nan(x))
    any_nan = tf.reduce_any(nan_position)
    # CropAndResize refuses non-finite boxes; sample those pixels at 0 and make them NaN below.
    rows = (tf.where(nan_position, 0.0, y) + 1.0) / (height_f + 1.0)
    cols = (tf.where(nan_position, 0.0, x) + 1.0) / (width_f + 1.0)
    boxes = tf.reshape(tf.stack([rows, cols, rows, cols], axis=-1), (-1, 4))
    box_indices = tf.repeat(tf.range(batch), out_shape[1] * out_shape[2])
    sampled = tf.raw_ops.CropAndResize(
        image=padded,
        boxes=boxes,
        box_ind=box_indices,
        crop_size=[1, 1],
        method="bilinear",
        extrapolation_value=0.0,
    )
    output_shape = tf.stack([batch, out_shape[1], out_shape[2], channels])
    sampled = tf.reshape(sampled, output_shape)
    # NaN where a position is NaN, as `gathered_bilinear_sample` gives (diverged offsets then
    # reach the loss, where training stops with a clear message); no pass over the output
    # when every position is a number.
    sampled = tf.cond(
        any_nan,
        lambda: tf.where(nan_position[..., tf.newaxis], tf.constant(float("nan")), sampled),
        lambda: sampled,
    )
    return tf.cast(sampled, features.dtype)
