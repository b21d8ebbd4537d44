"""TensorFlow's bilinear resizing kernel, for `layers.resize_bilinear` (TF only).

`resize_bilinear` in `keras.ops` interpolates one axis after the other: per axis
two gathers, two multiplications and a sum, each a pass over the tensor, and their
gradients (scatters) backward. TensorFlow's `ResizeBilinear` and its gradient
`ResizeBilinearGrad` do it in one multi-threaded pass each, on both grids of
`resize_bilinear`: corner-aligned (`align_corners=True`, PyTorch's
`align_corners=True`) and half-pixel centres. On this project's 2-core CPU the
forward pass is 2-2.5x faster and the backward pass 2-4.5x faster
(docs/benchmarks.md, "Fused bilinear resizing").

The kernel interpolates in float32 whatever the input type and returns float32;
the result is cast back to the input's type, so a bfloat16 input is interpolated
more exactly than by `keras.ops` in bfloat16.

XLA's CPU lowering of `ResizeBilinear` computes wrong values for some sizes (in
TensorFlow 2.21, 4x5 -> 16x20 with aligned corners and 5x7 -> 9x11 with half-pixel
centres, among others; tensorflow/tensorflow#118344 and #118467), so graphs that
XLA compiles (`tf.function(jit_compile=True)`, Keras' `compile(jit_compile=True)`,
XLA's auto-clustering) keep the `keras.ops` form, which XLA fuses itself.
"""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

# Input types the kernel and its gradient take, and whose values survive its
# float32 arithmetic (float64 does not: it stays on the keras.ops path).
FUSED_DTYPES = ("float16", "bfloat16", "float32")


def xla_compiles_this_graph():
    """Whether what is being traced now will be compiled by XLA: inside a
    `tf.function(jit_compile=True)` (at any depth), or with XLA's auto-clustering on.

    `control_flow_util` is not public API; `fused_resize_test` checks that it
    still tells, so that a TensorFlow release that changes it fails a test."""
    if tf.config.optimizer.get_jit():
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def fused_resize_applies(dtype):
    """Whether `fused_resize_bilinear` may resize images of `dtype` here."""
    return dtype in FUSED_DTYPES and not xla_compiles_this_graph()


def fused_resize_bilinear(images, size, align_corners):
    """Bilinear resizing of NHWC `images` to `size` in one kernel.

    Args:
        images: `(B, H, W, C)` tensor in one of `FUSED_DTYPES`.
        size: `(height, width)`, ints or scalar int32 tensors.
        align_corners: bool; True maps the corner pixels onto each other (an
            output of size 1 samples the first pixel), False uses half-pixel
            centres.

    Returns:
        `(B, height, width, C)` in the dtype of `images`.
    """
    resized = tf.raw_ops.ResizeBilinear(
        images=images,
        size=tf.cast(tf.stack(size), tf.int32),
        align_corners=bool(align_corners),
        half_pixel_centers=not align_corners,
    )
    return tf.cast(resized, images.dtype)
