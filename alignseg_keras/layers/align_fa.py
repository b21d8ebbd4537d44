"""AlignFA, the aligned feature aggregation module of AlignSeg (paper Eq. 1)."""

import keras
from keras import ops

from alignseg_keras.layers.alignment import AlignmentLayer
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.conv_norm_activation import check_activation
from alignseg_keras.layers.offset_head import OffsetHead


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignFA(keras.layers.Layer):
    """Aligned Feature Aggregation, paper Sec. 3.2, Fig. 2(b) and Eq. 1.

    The low-resolution feature F is upsampled (bilinear, align_corners=True) to
    the size of the high-resolution feature A; from their concatenation
    `[A, up(F)]` two offset heads predict the fields Delta_F and Delta_A, and
    both features are aligned and summed:
    `out = U(up(F), Delta_F) + U(A, Delta_A)` (Eq. 1, U from Eq. 2). Both
    offset heads start at zero, so training starts from plain upsampling + sum.
    This is the authors' `CAB` module; Delta_F is their `delta_gen1` and
    Delta_A their `delta_gen2`. Both inputs must have the same channels.

    Args:
        offset_filters: int, hidden channels of the offset heads (256).
        alignment: `"standard"` or `"official"`, the `AlignmentLayer` mode.
        activation: `"relu"` or `"leaky_relu"`.
        sync_batchnorm: bool, synchronise BatchNorm across replicas.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[high_resolution, low_resolution]`, `(B, H, W, C)` and
            `(B, h, w, C)`.
        return_offsets: bool; if True, also return the offsets
            `(B, H, W, 4)`: Delta_F in channels 0-1, Delta_A in 2-3.

    Example:
    ```python
    fine = np.random.rand(1, 64, 64, 256).astype("float32")
    coarse = np.random.rand(1, 32, 32, 256).astype("float32")
    fused = AlignFA()([fine, coarse])  # (1, 64, 64, 256)
    ```
    """

    def __init__(
        self,
        offset_filters=256,
        alignment="standard",
        activation="relu",
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.offset_filters = offset_filters
        self.alignment = alignment
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        head_args = dict(activation=activation, sync_batchnorm=sync_batchnorm)
        self.low_resolution_offsets = OffsetHead(
            offset_filters, name="low_resolution_offsets", **head_args
        )
        self.high_resolution_offsets = OffsetHead(
            offset_filters, name="high_resolution_offsets", **head_args
        )
        self.align = AlignmentLayer(alignment, name="align")

    def build(self, input_shape):
        high_shape, low_shape = input_shape
        if high_shape[-1] != low_shape[-1]:
            raise ValueError(
                "AlignFA: both inputs must have the same number of channels; "
                f"received {high_shape[-1]} and {low_shape[-1]}."
            )
        concat_shape = tuple(high_shape[:-1]) + (high_shape[-1] * 2,)
        self.low_resolution_offsets.build(concat_shape)
        self.high_resolution_offsets.build(concat_shape)

    def call(self, inputs, training=None, return_offsets=False):
        high, low = inputs
        low = resize_bilinear(low, (ops.shape(high)[1], ops.shape(high)[2]))
        concat = ops.concatenate([high, low], axis=-1)
        low_offsets = self.low_resolution_offsets(concat, training=training)
        high_offsets = self.high_resolution_offsets(concat, training=training)
        output = self.align([low, low_offsets]) + self.align([high, high_offsets])
        if return_offsets:
            return output, ops.concatenate([low_offsets, high_offsets], axis=-1)
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "offset_filters": self.offset_filters,
                "alignment": self.alignment,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config
