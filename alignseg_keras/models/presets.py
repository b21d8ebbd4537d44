"""Named AlignSeg configurations, for `AlignSeg.from_preset`."""

# The authors' released model (speedinghzl/AlignSeg): BN + LeakyReLU(0.01) (their
# InPlaceABN), the legacy sampler, AlignCM with 3x3 bins summed with the local
# feature, BGR input minus their mean (the deep-stem backbones' default), and no
# input padding. Loads their checkpoints (alignseg_keras.convert).
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
    "alignseg_resnet101_official": dict(_OFFICIAL, backbone="resnet101_deepstem"),
    "alignseg_resnet50_official": dict(_OFFICIAL, backbone="resnet50_deepstem"),
    # The paper's model on Keras' ResNet-101 (ImageNet weights available).
    "alignseg_resnet101": dict(backbone="resnet101", context_merge="concat"),
    "alignseg_resnet50": dict(backbone="resnet50", context_merge="concat"),
    # Small and fast: demos, tests and CPU experiments.
    "alignseg_resnet18_small": dict(
        backbone="resnet18", decoder_channels=64, context_hidden_channels=128
    ),
}
