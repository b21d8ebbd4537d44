"""The AlignSeg backbone: an image encoder and the two bottom-up pathways (paper Fig. 2)."""

import keras

from alignseg_keras.backbones.encoders import pyramid_encoder_model
from alignseg_keras.backbones.encoders import pyramid_feature_model
from alignseg_keras.config_utils import deserialized
from alignseg_keras.config_utils import model_config
from alignseg_keras.config_utils import set_model_dtype_policy
from alignseg_keras.config_utils import warn_if_policy_differs
from alignseg_keras.config_utils import without_saved_policy
from alignseg_keras.config_utils import without_synchronized_batchnorm
from alignseg_keras.layers.align_cm import AlignCM
from alignseg_keras.layers.align_fa import ALIGN_FA_OFFSETS
from alignseg_keras.layers.align_fa import AlignFA
from alignseg_keras.layers.alignment import ALIGNMENT_MODES
from alignseg_keras.layers.residual_conv_block import ResidualConvBlock
from alignseg_keras.layers.upsample_fusion import UpsampleFusion

# The alignment modules of the full model, in the order of the decoder; each
# has an offset output (the ablations of `fusion` and `context` drop some).
OFFSET_MODULES = ("align_fa2", "align_fa3", "align_fa4", "align_cm", "align_fa5")
# The decoder features the task reads: d5 for the head, d3 for deep supervision.
FEATURE_OUTPUTS = ("d3", "d5")
# The paper's ablations (Tables 1-4): how the decoder fuses a low-resolution
# stream into the stride-4 stream, and which context module feeds d5.
FUSION_MODES = ("align", "bilinear", "deconv")
CONTEXT_MODES = ("align", "pool", None)
# Fusion level -> stride ratio of its low-resolution input to the stride-4 stream.
_FUSION_FACTORS = {2: 2, 3: 4, 4: 8, 5: 8}


def _check_choice(argument, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{argument}` must be one of {choices}; received {argument}={value!r}."
        )


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

    The paper's ablations (Tables 1-4) are options; the defaults are the full
    model. `fusion` replaces AlignFA by bilinear upsampling + sum or by learned
    deconvolution + sum (`UpsampleFusion`, layers `fusion2` ... `fusion5`);
    `align_fa_offsets` keeps one of AlignFA's two alignments; `context`
    replaces AlignCM by the same pooled context without alignment (layer
    `pooled_context`) or drops it (`d5 = RCB5b(fuse(d4, RCB5a(C5)))`). Only
    modules that predict offsets have an offset output (`offset_modules`
    lists them); an AlignFA aligning one side outputs that field alone (2
    channels: Delta_F for `"low_res"`, Delta_A for `"high_res"`).

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
        fusion: `"align"` (AlignFA, Eq. 1), `"bilinear"` (bilinear upsampling,
            align_corners=True, + sum: Table 2's "RGS", Table 1's baseline) or
            `"deconv"` (transposed convolutions, one per factor of 2, + sum:
            Table 2), see `UpsampleFusion`.
        align_fa_offsets: `"both"` (Eq. 1), `"low_res"` (align the upsampled
            low-resolution feature only, Delta_F) or `"high_res"` (the
            high-resolution feature only, Delta_A: Table 3); with
            `fusion="align"` only.
        context: `"align"` (AlignCM, Eq. 3), `"pool"` (the same pooled
            context, upsampled bilinearly without alignment: Table 4) or None
            (no context module: Table 1's baseline and "+AlignFA").
        activation: `"relu"` (paper) or `"leaky_relu"` (the code's InPlaceABN).
        image_shape: input shape without the batch; None takes the encoder's
            (`(None, None, 3)` for encoders of any size; a fixed size for
            encoders that need one, such as keras-hub's `MiTBackbone`).
        dtype: the dtype policy of the decoder's layers (e.g.
            `"mixed_bfloat16"`); None takes Keras' global policy. The encoder
            given keeps the policy it was built in (a warning says so when it
            differs). Not saved in the config: a loaded model takes the policy
            of the process that loads it.
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

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
        fusion="align",
        align_fa_offsets="both",
        context="align",
        activation="relu",
        image_shape=None,
        dtype=None,
        **kwargs,
    ):
        if not isinstance(image_encoder, keras.Model):
            raise ValueError(
                "`image_encoder` must be a keras.Model with `pyramid_outputs`; received "
                f"{type(image_encoder).__name__}."
            )
        _check_choice("alignment", alignment, ALIGNMENT_MODES)
        _check_choice("fusion", fusion, FUSION_MODES)
        _check_choice("align_fa_offsets", align_fa_offsets, ALIGN_FA_OFFSETS)
        _check_choice("context", context, CONTEXT_MODES)
        if fusion != "align" and align_fa_offsets != "both":
            raise ValueError(
                "`align_fa_offsets` chooses what AlignFA aligns and needs fusion='align'; "
                f"received fusion={fusion!r} and align_fa_offsets={align_fa_offsets!r}."
            )
        kwargs.setdefault("name", "alignseg_backbone")
        offset_width = offset_channels or decoder_channels
        image_encoder = pyramid_encoder_model(image_encoder)  # saved with its pyramid
        warn_if_policy_differs(image_encoder, "image encoder", dtype)

        # === Layers ===
        features = pyramid_feature_model(image_encoder, name="image_encoder_pyramid")
        rcb = {
            name: ResidualConvBlock(
                decoder_channels, activation=activation, dtype=dtype, name=name
            )
            for name in ("rcb1a", "rcb2a", "rcb2b", "rcb3a", "rcb3b", "rcb4a", "rcb4b",
                         "rcb5a", "rcb5b")
        }
        if fusion == "align":
            fusions = {
                level: AlignFA(
                    offset_channels=offset_width,
                    alignment=alignment,
                    align_fa_offsets=align_fa_offsets,
                    activation=activation,
                    dtype=dtype,
                    name=f"align_fa{level}",
                )
                for level in (2, 3, 4, 5)
            }
        else:
            fusions = {
                level: UpsampleFusion(fusion, factor, dtype=dtype, name=f"fusion{level}")
                for level, factor in _FUSION_FACTORS.items()
            }
        context_module = None
        if context is not None:
            context_module = AlignCM(
                decoder_channels,
                context_bins=context_bins,
                context_hidden_channels=context_hidden_channels,
                context_merge=context_merge,
                offset_channels=offset_width,
                alignment=alignment,
                context=context,
                activation=activation,
                dtype=dtype,
                name="align_cm" if context == "align" else "pooled_context",
            )

        # === Functional model ===
        if image_shape is None:
            image_shape = tuple(image_encoder.inputs[0].shape[1:])
        images = keras.Input(image_shape, name="images")
        c2, c3, c4, c5 = features(images)
        offsets = {}

        def fuse(level, high_resolution, low_resolution):
            if fusion != "align":
                return fusions[level]([high_resolution, low_resolution])
            fused, offsets[f"align_fa{level}"] = fusions[level](
                [high_resolution, low_resolution], return_offsets=True
            )
            return fused

        d1 = rcb["rcb1a"](c2)
        d2 = rcb["rcb2b"](fuse(2, d1, rcb["rcb2a"](c3)))
        d3 = rcb["rcb3b"](fuse(3, d2, rcb["rcb3a"](c4)))
        d4 = rcb["rcb4b"](fuse(4, d3, rcb["rcb4a"](c5)))
        if context == "align":
            c5, offsets["align_cm"] = context_module(c5, return_offsets=True)
        elif context == "pool":
            c5 = context_module(c5)
        d5 = rcb["rcb5b"](fuse(5, d4, rcb["rcb5a"](c5)))
        offsets = {module: offsets[module] for module in OFFSET_MODULES if module in offsets}
        super().__init__(inputs=images, outputs={"d3": d3, "d5": d5, **offsets}, **kwargs)
        set_model_dtype_policy(self, dtype)

        # === Config ===
        self.image_encoder = image_encoder
        self.decoder_channels = int(decoder_channels)
        self.offset_channels = offset_channels
        self.context_bins = int(context_bins)
        self.context_merge = context_merge
        self.context_hidden_channels = context_hidden_channels
        self.alignment = alignment
        self.fusion = fusion
        self.align_fa_offsets = align_fa_offsets
        self.context = context
        self.activation = activation
        self.image_shape = tuple(image_shape)
        # The modules with an offset output, in the order of OFFSET_MODULES.
        self.offset_modules = tuple(offsets)

    def get_config(self):
        return {
            # As Keras serializes it; its policy is left out when it loads (once:
            # the most common policy of a plain functional encoder is its own).
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "decoder_channels": self.decoder_channels,
            "offset_channels": self.offset_channels,
            "context_bins": self.context_bins,
            "context_merge": self.context_merge,
            "context_hidden_channels": self.context_hidden_channels,
            "alignment": self.alignment,
            "fusion": self.fusion,
            "align_fa_offsets": self.align_fa_offsets,
            "context": self.context,
            "activation": self.activation,
            "image_shape": self.image_shape,
            **model_config(self),
        }

    @classmethod
    def from_preset(cls, preset, load_weights=True):
        """The backbone of a preset directory written by `AlignSeg.save_to_preset`,
        `AlignSegBackbone.save_to_preset` or `alignseg convert`: its `config.json`
        and `model.weights.h5`, as
        keras-hub's `Backbone.from_preset` reads them. A whole AlignSeg, heads
        included, is `AlignSeg.from_preset`; a new AlignSeg on this backbone,
        `AlignSeg(num_classes, backbone=preset)`.

        Args:
            preset: a preset directory.
            load_weights: bool, load the backbone's weights.

        Example:
        ```python
        backbone = AlignSegBackbone.from_preset("my_preset")
        ```
        """
        from alignseg_keras.models import preset_files

        if not preset_files.is_preset_directory(preset):
            raise ValueError(
                "AlignSegBackbone.from_preset takes a preset directory (with "
                f"{preset_files.CONFIG_FILE}); received {preset!r}. Named presets are AlignSeg's: "
                "AlignSeg.from_preset(name).backbone."
            )
        return preset_files.load_backbone(preset, load_weights)

    def save_to_preset(self, directory, description=None):
        """Writes the backbone alone to a preset directory, as keras-hub's backbones do:
        `config.json`, `model.weights.h5` and `metadata.json`.

        `AlignSegBackbone.from_preset` reads it back; `AlignSeg(num_classes,
        backbone=directory)` or `AlignSeg.from_preset(directory, num_classes=N)`
        put new heads on it. It holds no image converter: an AlignSeg built on it
        normalises as its encoder does (`mean`, `std` and `bgr` change that); a
        whole model with its normalisation and heads is `AlignSeg.save_to_preset`.
        The directory is written beside its place and renamed into it: an earlier
        backbone preset there is replaced, a crash leaves it as it was, and a
        directory holding other files (a whole AlignSeg's preset among them) is
        refused with a `ValueError`.

        Args:
            directory: the preset directory.
            description: str or None, a line for `metadata.json`.

        Example:
        ```python
        model.backbone.save_to_preset("alignseg_backbone")
        backbone = AlignSegBackbone.from_preset("alignseg_backbone")
        ```
        """
        from alignseg_keras.models import preset_files

        preset_files.save_backbone_preset(self, directory, description)

    @classmethod
    def from_config(cls, config):
        if isinstance(config.get("image_encoder"), dict):  # rebuilt in the global policy
            encoder = without_synchronized_batchnorm(without_saved_policy(config["image_encoder"]))
            config = {**config, "image_encoder": encoder}
        return cls(**deserialized(config, ["image_encoder"]))
