"""Backbones for AlignSeg: ResNets returning features at strides 4, 8, 16 and 32."""

import keras

from alignseg_keras.backbones.keras_applications import applications_resnet
from alignseg_keras.backbones.resnet import CeilModeMaxPooling2D
from alignseg_keras.backbones.resnet import basic_resnet
from alignseg_keras.backbones.resnet import deep_stem_resnet

# Per-backbone input conventions: RGB mean / std (0..255 scale) and channel order.
IMAGENET_RGB = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr=False)
CAFFE_BGR = dict(mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0), bgr=True)
AUTHORS_BGR = dict(
    mean=(122.67891434, 116.66876762, 104.00698793), std=(1.0, 1.0, 1.0), bgr=True
)

BACKBONES = {
    "resnet18": (basic_resnet, IMAGENET_RGB),
    "resnet34": (basic_resnet, IMAGENET_RGB),
    "resnet50": (applications_resnet, CAFFE_BGR),
    "resnet101": (applications_resnet, CAFFE_BGR),
    "resnet50_deepstem": (deep_stem_resnet, AUTHORS_BGR),
    "resnet101_deepstem": (deep_stem_resnet, AUTHORS_BGR),
}


def get_backbone(backbone, weights=None):
    """Returns a `keras.Model` from images to four feature maps (strides 4..32).

    Args:
        backbone: a name from `BACKBONES` or a `keras.Model` with four outputs.
        weights: None, or `"imagenet"` for `"resnet50"` / `"resnet101"`.
    """
    if isinstance(backbone, keras.Model):
        if len(backbone.outputs) != 4:
            raise ValueError(
                "A custom backbone must be a keras.Model with four outputs "
                "(features at strides 4, 8, 16 and 32); received "
                f"{len(backbone.outputs)} outputs."
            )
        if weights is not None:
            raise ValueError("`backbone_weights` applies only to named backbones.")
        return backbone
    if backbone not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)} "
            "or pass a keras.Model with four outputs."
        )
    build, _ = BACKBONES[backbone]
    if build is applications_resnet:
        return applications_resnet(backbone, weights=weights)
    if weights is not None:
        raise ValueError(
            f"Backbone {backbone!r} has no downloadable weights; use "
            "backbone_weights=None (or load the authors' checkpoint with "
            "alignseg_keras.convert for the deep-stem ResNets)."
        )
    return build(backbone)


def default_normalization(backbone):
    """Mean, std and channel order that suit `backbone` (ImageNet RGB by default)."""
    if isinstance(backbone, str) and backbone in BACKBONES:
        return dict(BACKBONES[backbone][1])
    return dict(IMAGENET_RGB)
