"""AlignCM, the aligned context modeling module of AlignSeg (paper Eq. 3)."""

import keras
from keras import ops

from alignseg_keras.checks import check_positive_int
from alignseg_keras.layers.adaptive_pooling import AdaptiveAveragePooling2D
from alignseg_keras.layers.alignment import ALIGNMENT_MODES
from alignseg_keras.layers.alignment import AlignmentLayer
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.config_names import renamed_config
from alignseg_keras.layers.conv_norm_activation import ConvNormActivation
from alignseg_keras.layers.conv_norm_activation import check_activation
from alignseg_keras.layers.offset_head import OffsetHead

MERGE_MODES = ("sum", "concat")
# How AlignCM places the pooled context: aligned by learned offsets (Eq. 3) or
# upsampled bilinearly ("w/o alignment" in the paper's Table 4).
CONTEXT_MODES = ("align", "pool")
# Old argument names (old -> new, the model's names); configs saved with them load.
RENAMED_ARGUMENTS = {
    "bins": "context_bins",
    "hidden_filters": "context_hidden_channels",
    "merge": "context_merge",
    "offset_filters": "offset_channels",
}


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignCM(keras.layers.Layer):
    """Aligned Context Modeling, paper Sec. 3.3, Fig. 2(c) and Eq. 3.

    Context is average-pooled into `context_bins x context_bins` bins (PyTorch's adaptive bin
    boundaries) and projected (1x1 conv to `context_hidden_channels`, 3x3 conv to
    `filters`, each with BN + activation); the local feature gets the same two
    convolutions. An offset head looks at `[local, up(context)]` and every
    pixel picks its context by sampling the pooled map at a learned position,
    `U(context, Delta)` (Eq. 2) at the local size. The result is merged with the
    local feature: `context_merge="sum"` as the authors' code (`filters` channels)
    or `context_merge="concat"` as the paper's Eq. 3 (`2 * filters` channels). This is the
    authors' `CAM` module.

    With `context="pool"` the pooled context is not aligned but upsampled
    bilinearly (align_corners=True) to the local size and merged the same way:
    the paper's Table 4 "w/o alignment". No offset head is built then.

    Args:
        filters: int, output channels of each branch (256).
        context_bins: int, pooled grid size K (the paper tries 2, 3 and 6; the code uses 3).
        context_hidden_channels: int or None, channels of the two 1x1
            convolutions; None
            keeps the input channels (2048 for ResNet-50/101), as the code.
        context_merge: `"sum"` or `"concat"`.
        offset_channels: int, hidden channels of the offset head (256).
        alignment: `"standard"` or `"official"`, the `AlignmentLayer` mode.
        context: `"align"` (Eq. 3) or `"pool"` (no alignment, no offsets).
        activation: `"relu"` or `"leaky_relu"`.
        sync_batchnorm: bool, synchronise BatchNorm across replicas.
        **kwargs: standard `keras.layers.Layer` arguments; `dtype` reaches
            every sublayer (the sampling positions are float32 whatever it is).

    Call arguments:
        inputs: `(B, H, W, C_in)` stride-32 backbone features.
        return_offsets: bool; if True, also return the offsets `(B, H, W, 2)`
            (`context="align"` only).

    Example:
    ```python
    features = np.random.rand(1, 16, 16, 2048).astype("float32")
    context = AlignCM(256, context_bins=3)(features)  # (1, 16, 16, 256)
    ```
    """

    def __init__(
        self,
        filters=256,
        context_bins=3,
        context_hidden_channels=None,
        context_merge="sum",
        offset_channels=256,
        alignment="standard",
        context="align",
        activation="relu",
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if context not in CONTEXT_MODES:
            raise ValueError(
                f"AlignCM: `context` must be one of {CONTEXT_MODES}; received {context!r}."
            )
        if context_merge not in MERGE_MODES:
            raise ValueError(
                f"AlignCM: `context_merge` must be one of {MERGE_MODES}; received "
                f"{context_merge!r}."
            )
        if alignment not in ALIGNMENT_MODES:
            raise ValueError(
                f"AlignCM: `alignment` must be one of {ALIGNMENT_MODES}; received {alignment!r}."
            )
        if context_hidden_channels is not None:  # None: the input's channels
            context_hidden_channels = check_positive_int(
                context_hidden_channels, "AlignCM: `context_hidden_channels`")
        self.filters = filters
        self.context_bins = check_positive_int(context_bins, "AlignCM: `context_bins`")
        self.context_hidden_channels = context_hidden_channels
        self.context_merge = context_merge
        self.offset_channels = offset_channels
        self.alignment = alignment
        self.context = context
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        self.pool = AdaptiveAveragePooling2D(
            self.context_bins, dtype=self.dtype_policy, name="pool"
        )
        self.offset_head = None
        self.align = None
        if context == "align":
            self.offset_head = OffsetHead(
                offset_channels,
                activation=activation,
                sync_batchnorm=sync_batchnorm,
                dtype=self.dtype_policy,
                name="offset_head",
            )
            self.align = AlignmentLayer(alignment, dtype=self.dtype_policy, name="align")

    def build(self, input_shape):
        hidden = self.context_hidden_channels or input_shape[-1]
        args = dict(
            activation=self.activation,
            sync_batchnorm=self.sync_batchnorm,
            dtype=self.dtype_policy,
        )
        self.context_reduce = ConvNormActivation(hidden, 1, name="context_reduce", **args)
        self.context_project = ConvNormActivation(
            self.filters, 3, name="context_project", **args
        )
        self.local_reduce = ConvNormActivation(hidden, 1, name="local_reduce", **args)
        self.local_project = ConvNormActivation(
            self.filters, 3, name="local_project", **args
        )
        reduced_shape = tuple(input_shape[:-1]) + (hidden,)
        for reduce, project in (
            (self.context_reduce, self.context_project),
            (self.local_reduce, self.local_project),
        ):
            reduce.build(input_shape)
            project.build(reduced_shape)
        if self.offset_head is not None:
            self.offset_head.build(tuple(input_shape[:-1]) + (2 * self.filters,))

    def call(self, inputs, training=None, return_offsets=False):
        if return_offsets and self.offset_head is None:
            raise ValueError("AlignCM: `return_offsets` needs context='align'.")
        context = self.context_reduce(self.pool(inputs), training=training)
        context = self.context_project(context, training=training)
        local = self.local_reduce(inputs, training=training)
        local = self.local_project(local, training=training)
        size = (ops.shape(local)[1], ops.shape(local)[2])
        upsampled = resize_bilinear(context, size)
        if self.offset_head is None:
            aligned = upsampled
        else:
            concat = ops.concatenate([local, upsampled], axis=-1)
            offsets = self.offset_head(concat, training=training)
            aligned = self.align([context, offsets])
        if self.context_merge == "sum":
            output = local + aligned
        else:
            output = ops.concatenate([local, aligned], axis=-1)
        if return_offsets:
            return output, offsets
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "context_bins": self.context_bins,
                "context_hidden_channels": self.context_hidden_channels,
                "context_merge": self.context_merge,
                "offset_channels": self.offset_channels,
                "alignment": self.alignment,
                "context": self.context,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Also reads configs with the old names (`bins`, `hidden_filters`, `merge`,
        `offset_filters`)."""
        return super().from_config(renamed_config(config, RENAMED_ARGUMENTS, "AlignCM"))
