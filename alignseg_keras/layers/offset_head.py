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


def pointwise_conv_of_concat(near, far, kernel):
    """`conv1x1(concat([near, up(far)]), kernel)` with the `far` half at `far`'s size.

    `up` is `resize_bilinear` to `near`'s size (align_corners=True). Bilinear
    resizing is linear and acts on each channel alone, and a 1x1 convolution is
    linear and acts on each pixel alone, so with the kernel's rows split into
    those of `near` (K_near) and those of `far` (K_far):
    `conv(concat([near, up(far)]), K) = conv(near, K_near) + up(conv(far, K_far))`.
    The `far` half then runs at `far`'s resolution (4-64x fewer pixels in
    AlignFA, a K x K grid in AlignCM) and no concatenation is built.

    Args:
        near: `(B, H, W, C)`, the first part of the concatenation.
        far: `(B, h, w, C')`, resized to `(H, W)` for the second part.
        kernel: `(1, 1, C + C', O)`, in the dtype of the inputs.

    Returns:
        `(B, H, W, O)`, equal to the concatenated form up to float rounding.
    """
    channels = near.shape[-1]
    size = (ops.shape(near)[1], ops.shape(near)[2])
    near_part = ops.conv(near, kernel[:, :, :channels, :])
    far_part = ops.conv(far, kernel[:, :, channels:, :])
    return near_part + resize_bilinear(far_part, size)


def offsets_of_concat(heads, near, far, training=None):
    """Each `OffsetHead`'s output on `concat([near, up(far)])`, without that concatenation.

    Equals `[head(concat([near, resize_bilinear(far, near's size)])) for head in heads]`
    (up to float rounding): the heads' hidden 1x1 convolutions run as one
    convolution (their kernels side by side along the output axis) split by
    `pointwise_conv_of_concat`, so the `far` half runs at `far`'s resolution.
    The weights are the heads' own, read, not changed: the variables, their names
    and shapes are those of `head(concat)`. The kernels are cast to the
    convolution's compute dtype, as `Conv2D` does (`mixed_bfloat16`).

    Args:
        heads: list of built `OffsetHead`s whose input is `concat([near, up(far)])`.
        near: `(B, H, W, C)`.
        far: `(B, h, w, C')`.
        training: passed to the heads' BatchNormalization.

    Returns:
        list of `(B, H, W, 2)` offset fields, one per head.
    """
    convs = [head.hidden.conv for head in heads]
    dtype = convs[0].compute_dtype
    kernels = [ops.cast(conv.kernel, dtype) for conv in convs]
    kernel = kernels[0] if len(kernels) == 1 else ops.concatenate(kernels, axis=-1)
    hidden = pointwise_conv_of_concat(ops.cast(near, dtype), ops.cast(far, dtype), kernel)
    if convs[0].use_bias:
        biases = [ops.cast(conv.bias, dtype) for conv in convs]
        hidden = hidden + (biases[0] if len(biases) == 1 else ops.concatenate(biases, axis=-1))
    offsets, start = [], 0
    for head in heads:
        stop = start + head.offset_channels
        piece = hidden if len(heads) == 1 else hidden[..., start:stop]
        offsets.append(head.call_after_hidden_conv(piece, training=training))
        start = stop
    return offsets


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

    def call_after_hidden_conv(self, hidden, training=None):
        """The head from its hidden 1x1 convolution's output on: BN, activation, 3x3 conv.

        `call(x)` is `call_after_hidden_conv(conv1x1(x, hidden.conv.kernel))`;
        `offsets_of_concat` computes that convolution without the concatenation.
        """
        hidden = self.hidden.norm(hidden, training=training)
        return self.offsets(apply_activation(hidden, self.hidden.activation))

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
