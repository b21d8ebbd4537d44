"""Image encoders for AlignSeg: feature pyramids at strides 4, 8, 16 and 32."""

from alignseg_keras.backbones.encoders import AUTHORS_BGR
from alignseg_keras.backbones.encoders import CAFFE_BGR
from alignseg_keras.backbones.encoders import IMAGENET_RGB
from alignseg_keras.backbones.encoders import RESNET_ARCHITECTURES
from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.backbones.encoders import pyramid_feature_model
from alignseg_keras.backbones.resnet import CeilModeMaxPooling2D
