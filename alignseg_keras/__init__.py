"""alignseg_keras: AlignSeg (Feature-Aligned Segmentation Networks) for Keras 3."""

from alignseg_keras import backbones
from alignseg_keras import layers
from alignseg_keras.models.alignseg import AlignSeg
from alignseg_keras.version import __version__
