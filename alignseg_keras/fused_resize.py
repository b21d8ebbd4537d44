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
"""

import tensorflow as tf

# Input types the kernel and its gradient take, and whose values survive its
# float32 arithmetic (float64 does not: it stays on the keras.ops path).
FUSED_DTYPES = ("float16", "bfloat16", "float32")


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
