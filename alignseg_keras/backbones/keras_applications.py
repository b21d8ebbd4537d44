"""ResNet-50 / ResNet-101 from `keras.applications` as feature extractors."""

import keras

from alignseg_keras.config_utils import global_dtype_policy
from alignseg_keras.layers.conv_norm_activation import BN_MOMENTUM

# Last layer of each stage (strides 4, 8, 16, 32) in keras.applications.
STAGE_OUTPUTS = {
    "resnet50": ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"],
    "resnet101": ["conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"],
}
CONSTRUCTORS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
}


def applications_resnet(name="resnet101", weights=None, input_shape=(None, None, 3),
                        dtype=None):
    """`keras.applications.ResNet50/101` returning `[C2, C3, C4, C5]`.

    `weights="imagenet"` downloads (or reads from the Keras cache) the ImageNet
    weights; those were trained on Caffe-style input (BGR, mean subtracted, no
    std), which is what AlignSeg's default normalisation for these backbones does.
    `dtype`: the layers' dtype policy (None: Keras' global policy; the
    constructors take no `dtype`, so it is the global policy while they run).

    The BatchNormalization layers train with momentum `BN_MOMENTUM` (0.9, the
    authors' InPlaceABNSync momentum 0.1 the Keras way) instead of
    keras.applications' 0.99, whose moving statistics average over about 100
    steps rather than 10; their epsilon stays 1.001e-5, the value the ImageNet
    weights were trained with.
    """
    with global_dtype_policy(dtype):
        base = CONSTRUCTORS[name](include_top=False, weights=weights, input_shape=input_shape)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    outputs = [base.get_layer(layer).output for layer in STAGE_OUTPUTS[name]]
    return keras.Model(base.input, outputs, name=name)
