"""The offset generator shared by AlignFA and AlignCM (the code's `delta_gen`)."""

import keras
from keras import ops

from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.config_names import renamed_config
from alignseg_keras.layers.conv_norm_activation import ConvNormActivation
from alignseg_keras.layers.conv_norm_activation import apply_activation
from alignseg_keras.layers.conv_norm_activation import check_activation

# Old argument names (old -> new, the model's names); configs saved with them load.
RENAMED_ARGUMENTS = {"filters": "offset_channels"}


def convolution_by_shifted_products(inputs, kernel):
    """A stride-1 `"same"` convolution with an odd square kernel, computed as one
    matrix product and a sum of shifted slices; no bias.

    With `W_ij` the kernel's `(C_in, C_out)` matrix at tap `(i, j)` and
    `r = (k - 1) / 2`, the convolution is
    `y[h, w] = sum_ij x[h + i - r, w + j - r] W_ij = sum_ij z_ij[h + i - r, w + j - r]`
    with `z_ij = x W_ij` (zero outside the image): one matrix product of the
    pixels with the kernel reshaped to `(C_in, k * k * C_out)` (a 1x1
    convolution), then `k * k` shifted slices summed (16-bit inputs in float32).
    Equal to the convolution to rounding, with the same kernel. For few output
    channels (the offset heads' 2) it is far faster to train on CPUs: TensorFlow's
    Eigen kernels spend 7x the forward pass on such a convolution's kernel gradient,
    and this form's gradients are matrix products (docs/benchmarks.md).

    Example:
    ```python
    x = np.random.rand(1, 16, 16, 32).astype("float32")
    kernel = np.random.rand(3, 3, 32, 2).astype("float32")
    y = convolution_by_shifted_products(x, kernel)  # ops.conv(x, kernel, padding="same")
    ```

    Args:
        inputs: `(B, H, W, C_in)`.
        kernel: `(k, k, C_in, C_out)` with odd `k`, in `inputs`' dtype.

    Returns:
        `(B, H, W, C_out)` in `inputs`' dtype.
    """
    size, size_across, in_channels, out_channels = kernel.shape
    if size != size_across or size % 2 == 0:
        raise ValueError(
            "convolution_by_shifted_products: the kernel must be square with an odd size "
            f"(symmetric 'same' padding); received a kernel of shape {tuple(kernel.shape)}."
        )
    radius = (size - 1) // 2
    batch, height, width = ops.shape(inputs)[0], ops.shape(inputs)[1], ops.shape(inputs)[2]
    # Column (i * k + j) * C_out + o of the matrix is W_ij's column o. A matrix
    # product over the pixels rather than a 1x1 ops.conv: XLA's CPU backend gives
    # the 1x1 convolution to YNNPACK, 10x slower at this shape.
    matrix = ops.reshape(
        ops.transpose(kernel, (2, 0, 1, 3)), (in_channels, size * size * out_channels)
    )
    products = ops.matmul(ops.reshape(inputs, (-1, in_channels)), matrix)
    sum_dtype = keras.backend.result_type(inputs.dtype, "float32")
    products = ops.reshape(
        ops.cast(products, sum_dtype), (batch, height, width, size * size * out_channels)
    )
    padded = ops.pad(products, [[0, 0], [radius, radius], [radius, radius], [0, 0]])
    padded = ops.reshape(
        padded, (batch, height + 2 * radius, width + 2 * radius, size * size, out_channels)
    )
    taps = ops.unstack(padded, num=size * size, axis=3)
    total = 0.0
    for index, tap in enumerate(taps):
        i, j = divmod(index, size)
        total = total + tap[:, i : i + height, j : j + width, :]
    return ops.cast(total, inputs.dtype)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class OffsetHead(keras.layers.Layer):
    """Predicts a 2-channel offset field, paper Sec. 3.2 and 3.3.

    A 1x1 convolution to `offset_channels` with BN + activation, then a 3x3
    convolution to 2 channels without bias whose kernel starts at zero, so that at
    initialisation every offset is zero and alignment is plain (bilinear)
    upsampling.

    Args:
        offset_channels: int, hidden channels (256 in the paper).
        activation: `"relu"` or `"leaky_relu"`.
        sync_batchnorm: bool, synchronise BatchNorm across replicas.
        **kwargs: standard `keras.layers.Layer` arguments; `dtype` reaches
            every sublayer.

    Example:
    ```python
    head = OffsetHead(256)
    offsets = head(np.ones((1, 32, 32, 512), "float32"))  # (1, 32, 32, 2), zeros
    ```
    """

    def __init__(self, offset_channels=256, activation="relu", sync_batchnorm=False, **kwargs):
        super().__init__(**kwargs)
        self.offset_channels = offset_channels
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        self.hidden = ConvNormActivation(
            offset_channels,
            1,
            activation=activation,
            sync_batchnorm=sync_batchnorm,
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.offsets = keras.layers.Conv2D(
            2,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer="zeros",
            dtype=self.dtype_policy,
            name="offsets",
        )

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.offsets.build(self.hidden.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return self._offsets_from_hidden(self.hidden(inputs, training=training))

    def _offsets_from_hidden(self, hidden):
        """`self.offsets(hidden)`, as `convolution_by_shifted_products`: the same
        kernel and result to rounding, several times faster to train."""
        hidden = ops.cast(hidden, self.offsets.compute_dtype)
        kernel = ops.cast(self.offsets.kernel, hidden.dtype)
        return convolution_by_shifted_products(hidden, kernel)

    def call_on_upsampled_pair(self, high, low, training=None):
        """`call(concatenate([high, resize_bilinear(low, size of high)]))`, computed
        without upsampling `low` first.

        The hidden 1x1 convolution `W` and align_corners bilinear upsampling
        `up` are both linear (per pixel and per channel), so
        `W [A; up(F)] = W_A A + up(W_F F)` with `W_A`, `W_F` the kernel's
        slices over `A`'s and `F`'s channels: the `F` half runs at `F`'s own
        resolution, the same weights, the same result to rounding.

        Args:
            high: `(B, H, W, C_A)`, the first part of the concatenation.
            low: `(B, h, w, C_F)`, upsampled to `(H, W)` in the concatenation.
            training: bool, BatchNormalization's mode.

        Returns:
            `(B, H, W, 2)` offsets.
        """
        conv = self.hidden.conv
        kernel = ops.cast(conv.kernel, high.dtype)
        split = high.shape[-1]
        size = (ops.shape(high)[1], ops.shape(high)[2])
        hidden = ops.conv(high, kernel[:, :, :split]) + ops.cast(
            resize_bilinear(ops.conv(low, ops.cast(kernel[:, :, split:], low.dtype)), size),
            high.dtype,
        )
        if conv.use_bias:
            hidden = hidden + ops.cast(conv.bias, hidden.dtype)
        hidden = self.hidden.norm(hidden, training=training)
        return self._offsets_from_hidden(apply_activation(hidden, self.activation))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "offset_channels": self.offset_channels,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Also reads configs with the old name `filters`."""
        return super().from_config(renamed_config(config, RENAMED_ARGUMENTS, "OffsetHead"))
