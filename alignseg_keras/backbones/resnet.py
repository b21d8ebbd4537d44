"""ResNet backbones returning features at strides 4, 8, 16 and 32.

- `resnet18` / `resnet34`: basic-block ResNets (He et al. 2016, torchvision
  layout), written here for fast demos and tests.
- `resnet50_deepstem` / `resnet101_deepstem`: the authors' backbone, a
  torchvision-style bottleneck ResNet (stride on the 3x3 convolution) with a
  deep stem of three 3x3 convolutions and a ceil-mode max-pool. Layer names
  follow the PyTorch state_dict (`layer1.0.conv1` -> `layer1_0_conv1`) so that
  the authors' checkpoints convert by name.

All convolutions pad symmetrically, as PyTorch does; BatchNorm epsilon is 1e-5.
"""

import keras
from keras import ops

from alignseg_keras.layers.conv_norm_activation import batch_norm

STAGE_BLOCKS = {
    "resnet18": [2, 2, 2, 2],
    "resnet34": [3, 4, 6, 3],
    "resnet50_deepstem": [3, 4, 6, 3],
    "resnet101_deepstem": [3, 4, 23, 3],
}
STAGE_WIDTHS = [64, 128, 256, 512]


@keras.saving.register_keras_serializable(package="alignseg_keras")
class CeilModeMaxPooling2D(keras.layers.Layer):
    """3x3 max-pooling with stride 2 and padding 1, `ceil_mode=True` as in PyTorch.

    Inputs must be non-negative (they follow a ReLU), so zero padding equals
    PyTorch's negative-infinity padding. An input of size H gives
    `ceil((H - 1) / 2) + 1` (512 -> 256 -> 129 in the authors' stem).

    The input is padded by 1 before and 2 after, whatever its size: for an even
    size the second row after is ceil mode's extra window, for an odd one no
    window reaches it. A constant padding keeps the static shape (a padding
    computed from the input's shape leaves even the channels unknown to
    TensorFlow, and LiteRT's converter then kept the next convolutions as
    TensorFlow ops that its interpreter cannot run).

    Args:
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    pooled = CeilModeMaxPooling2D()(np.ones((1, 256, 256, 8), "float32"))  # (1, 129, 129, 8)
    ```
    """

    def call(self, inputs):
        x = ops.pad(inputs, [[0, 0], [1, 2], [1, 2], [0, 0]])
        return ops.max_pool(x, pool_size=3, strides=2, padding="valid")

    def compute_output_shape(self, input_shape):
        def pooled(size):
            return None if size is None else size // 2 + 1

        return (input_shape[0], pooled(input_shape[1]), pooled(input_shape[2]), input_shape[3])


def _conv(x, filters, kernel_size, strides, name, dtype):
    """Conv2D without bias, padded symmetrically like PyTorch."""
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, dtype=dtype, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        dtype=dtype,
        name=name,
    )(x)


def _conv_bn(x, filters, kernel_size, strides, conv_name, bn_name, dtype, relu=True):
    x = _conv(x, filters, kernel_size, strides, conv_name, dtype)
    x = batch_norm(bn_name, dtype=dtype)(x)
    return keras.layers.ReLU(dtype=dtype, name=f"{bn_name}_relu")(x) if relu else x


def _shortcut(x, filters, strides, prefix, dtype):
    if strides == 1 and x.shape[-1] == filters:
        return x
    x = _conv(x, filters, 1, strides, f"{prefix}_downsample_0", dtype)
    return batch_norm(f"{prefix}_downsample_1", dtype=dtype)(x)


def _block_output(x, shortcut, prefix, dtype):
    x = keras.layers.Add(dtype=dtype, name=f"{prefix}_add")([x, shortcut])
    return keras.layers.ReLU(dtype=dtype, name=f"{prefix}_out")(x)


def _basic_block(x, width, strides, prefix, dtype):
    shortcut = _shortcut(x, width, strides, prefix, dtype)
    x = _conv_bn(x, width, 3, strides, f"{prefix}_conv1", f"{prefix}_bn1", dtype)
    x = _conv_bn(x, width, 3, 1, f"{prefix}_conv2", f"{prefix}_bn2", dtype, relu=False)
    return _block_output(x, shortcut, prefix, dtype)


def _bottleneck_block(x, width, strides, prefix, dtype):
    shortcut = _shortcut(x, width * 4, strides, prefix, dtype)
    x = _conv_bn(x, width, 1, 1, f"{prefix}_conv1", f"{prefix}_bn1", dtype)
    x = _conv_bn(x, width, 3, strides, f"{prefix}_conv2", f"{prefix}_bn2", dtype)
    x = _conv_bn(x, width * 4, 1, 1, f"{prefix}_conv3", f"{prefix}_bn3", dtype, relu=False)
    return _block_output(x, shortcut, prefix, dtype)


def _stages(x, blocks_per_stage, block, dtype):
    features = []
    for stage, blocks in enumerate(blocks_per_stage):
        for index in range(blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            x = block(x, STAGE_WIDTHS[stage], strides, f"layer{stage + 1}_{index}", dtype)
        features.append(x)
    return features


def basic_resnet(name="resnet18", input_shape=(None, None, 3), dtype=None):
    """ResNet-18 or ResNet-34 (torchvision layout, 7x7 stem), randomly initialised.

    Returns a `keras.Model` from images to `[C2, C3, C4, C5]` at strides 4..32
    with 64, 128, 256 and 512 channels; every layer in the dtype policy
    `dtype` (None: Keras' global policy).
    """
    inputs = keras.Input(input_shape, name="images")
    x = _conv_bn(inputs, 64, 7, 2, "conv1", "bn1", dtype)
    x = _max_pool(x, dtype)
    features = _stages(x, STAGE_BLOCKS[name], _basic_block, dtype)
    return keras.Model(inputs, features, name=name)


def _max_pool(x, dtype):
    """PyTorch's 3x3/2 max-pool with padding 1 (floor mode)."""
    x = keras.layers.ZeroPadding2D(1, dtype=dtype, name="maxpool_pad")(x)
    return keras.layers.MaxPooling2D(3, 2, dtype=dtype, name="maxpool")(x)


def deep_stem_resnet(name="resnet101_deepstem", input_shape=(None, None, 3), dtype=None):
    """The authors' deep-stem bottleneck ResNet-50/101, randomly initialised.

    Stem: 3x3 convs 3->64 (stride 2), 64->64, 64->128, each BN + ReLU, then a
    3x3/2 ceil-mode max-pool; bottleneck stages [3, 4, 6, 3] or [3, 4, 23, 3]
    with the stride on the 3x3 convolution. Returns `[C2, C3, C4, C5]` with
    256, 512, 1024 and 2048 channels; a 512x512 input gives 129, 65, 33, 17.
    Every layer is in the dtype policy `dtype` (None: Keras' global policy).
    """
    inputs = keras.Input(input_shape, name="images")
    x = _conv_bn(inputs, 64, 3, 2, "conv1", "bn1", dtype)
    x = _conv_bn(x, 64, 3, 1, "conv2", "bn2", dtype)
    x = _conv_bn(x, 128, 3, 1, "conv3", "bn3", dtype)
    x = CeilModeMaxPooling2D(dtype=dtype, name="maxpool")(x)
    features = _stages(x, STAGE_BLOCKS[name], _bottleneck_block, dtype)
    return keras.Model(inputs, features, name=name)
