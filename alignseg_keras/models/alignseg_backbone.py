"""The AlignSeg backbone: an image encoder and the two bottom-up pathways (paper Fig. 2)."""

import keras

from alignseg_keras.backbones.encoders import pyramid_feature_model
from alignseg_keras.config_utils import deserialized
from alignseg_keras.config_utils import model_config
from alignseg_keras.layers.align_cm import AlignCM
from alignseg_keras.layers.align_fa import AlignFA
from alignseg_keras.layers.alignment import ALIGNMENT_MODES
from alignseg_keras.layers.residual_conv_block import ResidualConvBlock

# The alignment modules, in the order of the decoder; each has an offset output.
OFFSET_MODULES = ("align_fa2", "align_fa3", "align_fa4", "align_cm", "align_fa5")
# The decoder features the task reads: d5 for the head, d3 for deep supervision.
FEATURE_OUTPUTS = ("d3", "d5")


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignSegBackbone(keras.Model):
    """AlignSeg's feature network (Huang et al., TPAMI 2021, Fig. 2): encoder + decoder.

    The encoder's features C2..C5 (strides 4, 8, 16, 32) feed two bottom-up
    pathways. The first refines each stage with a Residual Conv Block (RCB,
    Sec. 3.1) and fuses it into the stride-4 stream with AlignFA (Eq. 1); the
    second pools context with AlignCM (Eq. 3) and fuses it the same way. With
    d1..d5 the stride-4 streams:

        d1 = RCB1a(C2)
        d2 = RCB2b(AlignFA2(d1, RCB2a(C3)))
        d3 = RCB3b(AlignFA3(d2, RCB3a(C4)))      (deep supervision reads d3)
        d4 = RCB4b(AlignFA4(d3, RCB4a(C5)))
        d5 = RCB5b(AlignFA5(d4, RCB5a(AlignCM(C5))))

    The model takes normalised images (the task's image converter makes them)
    and returns a dict: `"d5"` and `"d3"` (`decoder_channels` each, stride 4)
    and the offset field of every alignment module (`"align_fa2"` ...
    `"align_fa5"`: 4 channels, Delta_F then Delta_A, at stride 4;
    `"align_cm"`: 2 channels at stride 32).

    Args:
        image_encoder: a `keras.Model` with `pyramid_outputs` at strides 4, 8,
            16 and 32 (keras-hub's `FeaturePyramidBackbone` contract, e.g.
            `ResNetEncoder`, keras-hub's `ResNetBackbone`, `MiTBackbone`), or
            with four such outputs.
        decoder_channels: int, channels of every decoder stream (256).
        offset_channels: int or None, hidden channels of the offset heads;
            None makes them as wide as the decoder (256 in the paper and code).
        context_bins: int, AlignCM's pooled grid size K (3).
        context_merge: `"sum"` (the authors' code) or `"concat"` (paper Eq. 3).
        context_hidden_channels: int or None, AlignCM's 1x1 convolution
            channels; None keeps the encoder's stride-32 channels.
        alignment: `"standard"` (paper Eq. 2) or `"official"` (the authors'
            released sampler), see `AlignmentLayer`.
        activation: `"relu"` (paper) or `"leaky_relu"` (the code's InPlaceABN).
        image_shape: input shape without the batch; None takes the encoder's
            (`(None, None, 3)` for encoders of any size; a fixed size for
            encoders that need one, such as keras-hub's `MiTBackbone`).
        **kwargs: `keras.Model` arguments (`name`, `dtype`, `trainable`).

    Example:
    ```python
    backbone = AlignSegBackbone(ResNetEncoder("resnet18"), decoder_channels=64)
    outputs = backbone(np.zeros((1, 64, 64, 3), "float32"))  # outputs["d5"]: (1, 16, 16, 64)
    ```
    """

    def __init__(
        self,
        image_encoder,
        decoder_channels=256,
        offset_channels=None,
        context_bins=3,
        context_merge="sum",
        context_hidden_channels=None,
        alignment="standard",
        activation="relu",
        image_shape=None,
        **kwargs,
    ):
        if not isinstance(image_encoder, keras.Model):
            raise ValueError(
                "`image_encoder` must be a keras.Model with `pyramid_outputs`; received "
                f"{type(image_encoder).__name__}."
            )
        if alignment not in ALIGNMENT_MODES:
            raise ValueError(
                f"`alignment` must be one of {ALIGNMENT_MODES}; received {alignment!r}."
            )
        kwargs.setdefault("name", "alignseg_backbone")
        offset_width = offset_channels or decoder_channels

        # === Layers ===
        features = pyramid_feature_model(image_encoder, name="image_encoder_pyramid")
        rcb = {
            name: ResidualConvBlock(decoder_channels, activation=activation, name=name)
            for name in ("rcb1a", "rcb2a", "rcb2b", "rcb3a", "rcb3b", "rcb4a", "rcb4b",
                         "rcb5a", "rcb5b")
        }
        align_fa = {
            name: AlignFA(
                offset_filters=offset_width,
                alignment=alignment,
                activation=activation,
                name=name,
            )
            for name in ("align_fa2", "align_fa3", "align_fa4", "align_fa5")
        }
        align_cm = AlignCM(
            decoder_channels,
            bins=context_bins,
            hidden_filters=context_hidden_channels,
            merge=context_merge,
            offset_filters=offset_width,
            alignment=alignment,
            activation=activation,
            name="align_cm",
        )

        # === Functional model ===
        if image_shape is None:
            image_shape = tuple(image_encoder.inputs[0].shape[1:])
        images = keras.Input(image_shape, name="images")
        c2, c3, c4, c5 = features(images)
        offsets = {}

        def fuse(module, high_resolution, low_resolution):
            fused, offsets[module] = align_fa[module](
                [high_resolution, low_resolution], return_offsets=True
            )
            return fused

        d1 = rcb["rcb1a"](c2)
        d2 = rcb["rcb2b"](fuse("align_fa2", d1, rcb["rcb2a"](c3)))
        d3 = rcb["rcb3b"](fuse("align_fa3", d2, rcb["rcb3a"](c4)))
        d4 = rcb["rcb4b"](fuse("align_fa4", d3, rcb["rcb4a"](c5)))
        context, offsets["align_cm"] = align_cm(c5, return_offsets=True)
        d5 = rcb["rcb5b"](fuse("align_fa5", d4, rcb["rcb5a"](context)))
        super().__init__(inputs=images, outputs={"d3": d3, "d5": d5, **offsets}, **kwargs)

        # === Config ===
        self.image_encoder = image_encoder
        self.decoder_channels = int(decoder_channels)
        self.offset_channels = offset_channels
        self.context_bins = int(context_bins)
        self.context_merge = context_merge
        self.context_hidden_channels = context_hidden_channels
        self.alignment = alignment
        self.activation = activation
        self.image_shape = tuple(image_shape)

    def get_config(self):
        return {
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "decoder_channels": self.decoder_channels,
            "offset_channels": self.offset_channels,
            "context_bins": self.context_bins,
            "context_merge": self.context_merge,
            "context_hidden_channels": self.context_hidden_channels,
            "alignment": self.alignment,
            "activation": self.activation,
            "image_shape": self.image_shape,
            **model_config(self),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialized(config, ["image_encoder", "dtype"]))
