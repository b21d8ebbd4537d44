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
        **kwargs: standard `keras.layers.Layer` arguments.

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
            name="hidden",
        )
        self.offsets = keras.layers.Conv2D(
            2,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer="zeros",
            name="offsets",
        )

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.offsets.build(self.hidden.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return self.offsets(self.hidden(inputs, training=training))

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
        return self.offsets(apply_activation(hidden, self.activation))

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
