"""Adaptive average pooling with PyTorch's bin boundaries."""

import keras
from keras import ops

from alignseg_keras.checks import check_positive_int


def adaptive_pooling_matrix(in_size, bins):
    """`(bins, in_size)` averaging matrix; bin k covers [floor(k n / b), ceil((k + 1) n / b))."""
    k = ops.arange(bins, dtype="int32")
    start = (k * in_size) // bins
    end = ((k + 1) * in_size + bins - 1) // bins
    positions = ops.reshape(ops.arange(in_size, dtype="int32"), (1, -1))
    inside = ops.logical_and(
        positions >= ops.reshape(start, (-1, 1)), positions < ops.reshape(end, (-1, 1))
    )
    count = ops.cast(ops.reshape(end - start, (-1, 1)), "float32")
    return ops.cast(inside, "float32") / count


def adaptive_average_pool(inputs, bins):
    """Average-pools `(B, H, W, C)` to `(B, bins, bins, C)` like PyTorch's AdaptiveAvgPool2d.

    Two products with the averaging matrices, each broadcast over the other axes
    (`einsum("kh,bhwc->bkwc")`, then over the width, written as matrix products):
    TensorFlow's einsum of a batch of unknown size and a known height and width
    became a LiteRT tensor of invalid static shape `[-1, ...]`, which the
    interpreter refuses to load.
    """
    shape = ops.shape(inputs)
    rows = ops.cast(adaptive_pooling_matrix(shape[1], bins), inputs.dtype)
    cols = ops.cast(adaptive_pooling_matrix(shape[2], bins), inputs.dtype)
    pooled = ops.matmul(rows, ops.transpose(inputs, (0, 2, 1, 3)))  # (B, W, bins, C)
    return ops.matmul(cols, ops.transpose(pooled, (0, 2, 1, 3)))  # (B, bins, bins, C)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed `bins x bins` grid, as PyTorch's `AdaptiveAvgPool2d`.

    Bin k of n along an axis of size H covers rows `[floor(k H / n), ceil((k + 1) H / n))`,
    so neighbouring bins overlap when H is not a multiple of n. Works on inputs
    of any (also dynamic) size, with a matrix product per axis.

    Args:
        bins: int, output height and width.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    pooled = AdaptiveAveragePooling2D(3)(np.ones((1, 10, 7, 8), "float32"))  # (1, 3, 3, 8)
    ```
    """

    def __init__(self, bins, **kwargs):
        super().__init__(**kwargs)
        self.bins = check_positive_int(bins, "AdaptiveAveragePooling2D: `bins`")

    def call(self, inputs):
        return adaptive_average_pool(inputs, self.bins)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"bins": self.bins})
        return config
