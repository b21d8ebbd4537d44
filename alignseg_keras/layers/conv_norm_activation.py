"""Convolution, BatchNormalization and activation: the authors' `conv + ABN` unit."""

import keras
from keras import ops

from alignseg_keras.layers.batch_normalization import FusedBatchNormalization

ACTIVATIONS = ("relu", "leaky_relu", None)
# InPlaceABN's default slope, used by the authors wherever they write "ABN".
LEAKY_RELU_SLOPE = 0.01
# Also InPlaceABN's eps, so the authors' variance term sqrt(var + eps) matches
# (alignseg_keras.convert maps their scale |w| + eps onto gamma).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1 expressed the Keras way.


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {ACTIVATIONS}; received {activation!r}."
        )
    return activation


def apply_activation(x, activation):
    """Applies `"relu"`, `"leaky_relu"` (slope 0.01, as InPlaceABN) or nothing."""
    if activation == "relu":
        return ops.relu(x)
    if activation == "leaky_relu":
        return ops.leaky_relu(x, negative_slope=LEAKY_RELU_SLOPE)
    return x


def batch_norm(name, sync_batchnorm=False, dtype=None):
    """The BatchNormalization used throughout: epsilon 1e-5, momentum 0.9 (fused on TF).

    `dtype`: its dtype policy (None: Keras' global policy)."""
    return FusedBatchNormalization(
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        synchronized=sync_batchnorm,
        dtype=dtype,
        name=name,
    )


@keras.saving.register_keras_serializable(package="alignseg_keras")
class ConvNormActivation(keras.layers.Layer):
    """Conv2D, then BatchNormalization, then an activation.

    This is the authors' `conv -> InPlaceABN` unit (BN followed by LeakyReLU
    with slope 0.01) when `activation="leaky_relu"`, and the paper's
    `conv -> BN -> ReLU` with `activation="relu"`. Convolutions with a stride
    pad symmetrically, as PyTorch does.

    Args:
        filters: int, output channels.
        kernel_size: int, square kernel size.
        strides: int, convolution stride.
        use_bias: bool, whether the convolution has a bias.
        activation: `"relu"`, `"leaky_relu"` or None.
        sync_batchnorm: bool, synchronise BatchNorm statistics across replicas
            (TensorFlow backend).
        **kwargs: standard `keras.layers.Layer` arguments; `dtype` reaches the
            convolution and the BatchNormalization.

    Example:
    ```python
    layer = ConvNormActivation(64, kernel_size=3, activation="relu")
    y = layer(np.ones((1, 32, 32, 16), "float32"))  # (1, 32, 32, 64)
    ```
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        use_bias=False,
        activation="relu",
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.use_bias = use_bias
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        padding = "same" if strides == 1 else "valid"
        self.padding = None
        if strides != 1 and kernel_size > 1:
            self.padding = keras.layers.ZeroPadding2D(
                kernel_size // 2, dtype=self.dtype_policy, name="pad"
            )
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer="he_normal",
            dtype=self.dtype_policy,
            name="conv",
        )
        self.norm = batch_norm("norm", sync_batchnorm, dtype=self.dtype_policy)

    def build(self, input_shape):
        if self.padding is not None:
            self.padding.build(input_shape)
            input_shape = self.padding.compute_output_shape(input_shape)
        self.conv.build(input_shape)
        self.norm.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = inputs if self.padding is None else self.padding(inputs)
        x = self.norm(self.conv(x), training=training)
        return apply_activation(x, self.activation)

    def compute_output_shape(self, input_shape):
        if self.padding is not None:
            input_shape = self.padding.compute_output_shape(input_shape)
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "use_bias": self.use_bias,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config
