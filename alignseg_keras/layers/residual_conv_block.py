"""The Residual Conv Block (RCB) of AlignSeg, paper Sec. 3.1 and Fig. 2(a)."""

import keras

from alignseg_keras.layers.conv_norm_activation import ConvNormActivation
from alignseg_keras.layers.conv_norm_activation import apply_activation
from alignseg_keras.layers.conv_norm_activation import batch_norm
from alignseg_keras.layers.conv_norm_activation import check_activation


@keras.saving.register_keras_serializable(package="alignseg_keras")
class ResidualConvBlock(keras.layers.Layer):
    """Residual Conv Block (RCB), paper Sec. 3.1, Fig. 2(a) (the code's `RRB`).

    A 1x1 convolution unifies the channels to `filters`; a residual branch of a
    3x3 convolution to `filters // 4` (BN + activation) and a 3x3 convolution back
    to `filters` is added to it; BN and the activation follow the sum:
    `out = act(BN(unify(x) + conv3x3(act(BN(conv3x3(unify(x)))))))`.
    No convolution has a bias.

    Args:
        filters: int, output channels (256 in the paper).
        activation: `"relu"` or `"leaky_relu"` (the authors' InPlaceABN).
        sync_batchnorm: bool, synchronise BatchNorm across replicas.
        **kwargs: standard `keras.layers.Layer` arguments; `dtype` reaches
            every sublayer.

    Example:
    ```python
    block = ResidualConvBlock(256)
    y = block(np.ones((1, 32, 32, 1024), "float32"))  # (1, 32, 32, 256)
    ```
    """

    def __init__(self, filters=256, activation="relu", sync_batchnorm=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        self.unify = keras.layers.Conv2D(
            filters,
            1,
            use_bias=False,
            kernel_initializer="he_normal",
            dtype=self.dtype_policy,
            name="unify",
        )
        self.residual_reduce = ConvNormActivation(
            filters // 4,
            3,
            activation=activation,
            sync_batchnorm=sync_batchnorm,
            dtype=self.dtype_policy,
            name="residual_reduce",
        )
        self.residual_expand = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            dtype=self.dtype_policy,
            name="residual_expand",
        )
        self.norm = batch_norm("norm", sync_batchnorm, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.unify.build(input_shape)
        unified_shape = self.unify.compute_output_shape(input_shape)
        self.residual_reduce.build(unified_shape)
        self.residual_expand.build(self.residual_reduce.compute_output_shape(unified_shape))
        self.norm.build(unified_shape)

    def call(self, inputs, training=None):
        x = self.unify(inputs)
        residual = self.residual_expand(self.residual_reduce(x, training=training))
        x = self.norm(x + residual, training=training)
        return apply_activation(x, self.activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config
