"""AlignFA, the aligned feature aggregation module of AlignSeg (paper Eq. 1)."""

import keras
from keras import ops

from alignseg_keras.layers.alignment import AlignmentLayer
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.config_names import renamed_config
from alignseg_keras.layers.conv_norm_activation import check_activation
from alignseg_keras.layers.offset_head import OffsetHead

# Which features AlignFA aligns (paper Table 3): the upsampled low-resolution
# one (Delta_F, the code's delta_gen1), the high-resolution one (Delta_A,
# delta_gen2), or both (Eq. 1, the default).
ALIGN_FA_OFFSETS = ("both", "low_res", "high_res")
# Old argument names (old -> new, the model's names); configs saved with them load.
RENAMED_ARGUMENTS = {"offset_filters": "offset_channels"}


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignFA(keras.layers.Layer):
    """Aligned Feature Aggregation, paper Sec. 3.2, Fig. 2(b) and Eq. 1.

    The low-resolution feature F is upsampled (bilinear, align_corners=True) to
    the size of the high-resolution feature A; from their concatenation
    `[A, up(F)]` two offset heads predict the fields Delta_F and Delta_A (each
    head's first 1x1 convolution computed as `W_A A + up(W_F F)`, equal by
    linearity, so that F's half runs at F's resolution), and
    both features are aligned and summed:
    `out = U(up(F), Delta_F) + U(A, Delta_A)` (Eq. 1, U from Eq. 2). Both
    offset heads start at zero, so training starts from plain upsampling + sum.
    This is the authors' `CAB` module; Delta_F is their `delta_gen1` and
    Delta_A their `delta_gen2`. Both inputs must have the same channels.

    `align_fa_offsets` keeps one of the two alignments (the paper's Table 3):
    `"low_res"` aligns only the upsampled F, `out = U(up(F), Delta_F) + A`;
    `"high_res"` only A, `out = up(F) + U(A, Delta_A)`. The other feature is
    used as it is, and only the offset head in use is built.

    Args:
        offset_channels: int, hidden channels of the offset heads (256).
        alignment: `"standard"` or `"official"`, the `AlignmentLayer` mode.
        align_fa_offsets: `"both"` (Eq. 1), `"low_res"` or `"high_res"`.
        activation: `"relu"` or `"leaky_relu"`.
        sync_batchnorm: bool, synchronise BatchNorm across replicas.
        **kwargs: standard `keras.layers.Layer` arguments; `dtype` reaches
            every sublayer (the sampling positions are float32 whatever it is).

    Call arguments:
        inputs: `[high_resolution, low_resolution]`, `(B, H, W, C)` and
            `(B, h, w, C)`.
        return_offsets: bool; if True, also return the offsets
            `(B, H, W, 4)`: Delta_F in channels 0-1, Delta_A in 2-3; with
            one alignment, its field alone, `(B, H, W, 2)`.

    Example:
    ```python
    fine = np.random.rand(1, 64, 64, 256).astype("float32")
    coarse = np.random.rand(1, 32, 32, 256).astype("float32")
    fused = AlignFA()([fine, coarse])  # (1, 64, 64, 256)
    ```
    """

    def __init__(
        self,
        offset_channels=256,
        alignment="standard",
        align_fa_offsets="both",
        activation="relu",
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if align_fa_offsets not in ALIGN_FA_OFFSETS:
            raise ValueError(
                f"AlignFA: `align_fa_offsets` must be one of {ALIGN_FA_OFFSETS}; "
                f"received align_fa_offsets={align_fa_offsets!r}."
            )
        self.offset_channels = offset_channels
        self.alignment = alignment
        self.align_fa_offsets = align_fa_offsets
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        head_args = dict(
            activation=activation, sync_batchnorm=sync_batchnorm, dtype=self.dtype_policy
        )
        # Created in this order (low, high) for the default, as every saved file has them.
        self.low_resolution_offsets = None
        self.high_resolution_offsets = None
        if align_fa_offsets in ("both", "low_res"):
            self.low_resolution_offsets = OffsetHead(
                offset_channels, name="low_resolution_offsets", **head_args
            )
        if align_fa_offsets in ("both", "high_res"):
            self.high_resolution_offsets = OffsetHead(
                offset_channels, name="high_resolution_offsets", **head_args
            )
        self.align = AlignmentLayer(alignment, dtype=self.dtype_policy, name="align")

    def _offset_heads(self):
        """The offset heads built, in the order of the offset channels.

        A method, not a property: Keras' saving walks the attributes.
        """
        return [
            head
            for head in (self.low_resolution_offsets, self.high_resolution_offsets)
            if head is not None
        ]

    def build(self, input_shape):
        high_shape, low_shape = input_shape
        if high_shape[-1] != low_shape[-1]:
            raise ValueError(
                "AlignFA: both inputs must have the same number of channels; "
                f"received {high_shape[-1]} and {low_shape[-1]}."
            )
        concat_shape = tuple(high_shape[:-1]) + (high_shape[-1] * 2,)
        for head in self._offset_heads():
            head.build(concat_shape)

    def call(self, inputs, training=None, return_offsets=False):
        high, low = inputs
        # Each offset head sees [A, up(F)], computed as W_A A + up(W_F F)
        # (OffsetHead.call_on_upsampled_pair): F's half at F's resolution.
        offsets = [
            head.call_on_upsampled_pair(high, low, training=training)
            for head in self._offset_heads()
        ]
        low = resize_bilinear(low, (ops.shape(high)[1], ops.shape(high)[2]))
        if self.low_resolution_offsets is not None:
            low = self.align([low, offsets[0]])
        if self.high_resolution_offsets is not None:
            high = self.align([high, offsets[-1]])
        # The aligned side may compute in another dtype than the side used as it is.
        output = low + ops.cast(high, low.dtype)
        if return_offsets:
            return output, ops.concatenate(offsets, axis=-1) if len(offsets) > 1 else offsets[0]
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "offset_channels": self.offset_channels,
                "alignment": self.alignment,
                "align_fa_offsets": self.align_fa_offsets,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Also reads configs with the old name `offset_filters`."""
        return super().from_config(renamed_config(config, RENAMED_ARGUMENTS, "AlignFA"))
