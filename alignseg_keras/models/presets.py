"""The registry of named AlignSeg configurations, for `AlignSeg.from_preset`.

The one place that names presets: the model, the converter and the command line
read their names from here. A named preset is an architecture (random weights,
or ImageNet weights where Keras offers them); a preset *directory*, written by
`AlignSeg.save_to_preset` or `alignseg convert`, carries weights too.
"""

# The encoder of `AlignSeg` when none is named, and the default class count
# (Cityscapes' 19 train ids, as the authors' checkpoints).
DEFAULT_ENCODER = "resnet101"
DEFAULT_NUM_CLASSES = 19

# The authors' released model (speedinghzl/AlignSeg): BN + LeakyReLU(0.01) (their
# InPlaceABN), the legacy sampler, AlignCM with 3x3 bins summed with the local
# feature, BGR input minus their mean (the deep-stem encoders' convention), and
# no input padding. Loads their checkpoints (alignseg_keras.convert).
_OFFICIAL = dict(
    decoder_channels=256,
    context_bins=3,
    context_merge="sum",
    alignment="official",
    activation="leaky_relu",
    deep_supervision=True,
    pad_to_multiple=None,
)

PRESETS = {
    "alignseg_resnet101_official": dict(
        description="The authors' released network: deep-stem ResNet-101, their sampler "
        "and InPlaceABN arithmetic; loads their checkpoints (alignseg convert).",
        arguments=dict(_OFFICIAL, backbone="resnet101_deepstem"),
    ),
    "alignseg_resnet50_official": dict(
        description="The authors' network on their deep-stem ResNet-50.",
        arguments=dict(_OFFICIAL, backbone="resnet50_deepstem"),
    ),
    "alignseg_resnet101": dict(
        description="The paper's model (Eq. 2 sampler, concatenated context, Eq. 3) on "
        "Keras' ResNet-101 (ImageNet weights with backbone_weights='imagenet').",
        arguments=dict(backbone="resnet101", context_merge="concat"),
    ),
    "alignseg_resnet50": dict(
        description="The paper's model on Keras' ResNet-50.",
        arguments=dict(backbone="resnet50", context_merge="concat"),
    ),
    "alignseg_resnet18_small": dict(
        description="Small and fast, for demos, tests and CPU experiments: ResNet-18 and a "
        "64-channel decoder.",
        arguments=dict(backbone="resnet18", decoder_channels=64, context_hidden_channels=128),
    ),
}

# The official preset of each depth of the authors' deep-stem ResNet.
OFFICIAL_PRESETS = {50: "alignseg_resnet50_official", 101: "alignseg_resnet101_official"}


def preset_arguments(name, overrides=None):
    """The `AlignSeg` arguments of a named preset, with `overrides` applied.

    Example:
    ```python
    preset_arguments("alignseg_resnet18_small", {"dropout": 0.2})["decoder_channels"]  # 64
    ```
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}: neither a name ({', '.join(sorted(PRESETS))}) nor a "
            "preset directory (a folder with config.json, written by save_to_preset)."
        )
    return {**PRESETS[name]["arguments"], **(overrides or {})}
