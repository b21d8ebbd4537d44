"""alignseg_keras: AlignSeg (Feature-Aligned Segmentation Networks) for Keras 3.

Importing the package registers every layer, loss, metric and schedule with
Keras, so `keras.saving.load_model("model.keras")` needs no `custom_objects`.
"""

from alignseg_keras import backbones
from alignseg_keras import layers
from alignseg_keras import losses
from alignseg_keras import metrics
from alignseg_keras import optimizers
from alignseg_keras.models.alignseg import AlignSeg
from alignseg_keras.models.alignseg_backbone import AlignSegBackbone
from alignseg_keras.version import __version__
