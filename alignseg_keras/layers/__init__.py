"""AlignSeg layers: the alignment function, AlignFA, AlignCM, their parts and ablations."""

from alignseg_keras.layers.adaptive_pooling import AdaptiveAveragePooling2D
from alignseg_keras.layers.align_cm import AlignCM
from alignseg_keras.layers.align_fa import AlignFA
from alignseg_keras.layers.alignment import AlignmentLayer
from alignseg_keras.layers.alignment import BilinearResize
from alignseg_keras.layers.alignment import bilinear_sample
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.batch_normalization import FusedBatchNormalization
from alignseg_keras.layers.conv_norm_activation import ConvNormActivation
from alignseg_keras.layers.offset_head import OffsetHead
from alignseg_keras.layers.offset_head import convolution_by_shifted_products
from alignseg_keras.layers.preprocessing import CropToReference
from alignseg_keras.layers.preprocessing import ImageNormalization
from alignseg_keras.layers.preprocessing import PadToMultiple
from alignseg_keras.layers.residual_conv_block import ResidualConvBlock
from alignseg_keras.layers.segmentation_head import SegmentationHead
from alignseg_keras.layers.upsample_fusion import BilinearUpsamplingKernel
from alignseg_keras.layers.upsample_fusion import UpsampleFusion
