"""The classification head (and deep-supervision head) of AlignSeg."""

import keras

from alignseg_keras.layers.conv_norm_activation import ConvNormActivation
from alignseg_keras.layers.conv_norm_activation import check_activation


@keras.saving.register_keras_serializable(package="alignseg_keras")
class SegmentationHead(keras.layers.Layer):
    """3x3 conv (with bias) + BN + activation, spatial dropout, 1x1 conv to classes.

    The authors' `head` and deep-supervision `dsn` modules (paper Sec. 3.4).

    Args:
        num_classes: int, number of output classes.
        filters: int, hidden channels (256).
        dropout: float, SpatialDropout2D rate (0.1).
        activation: `"relu"` or `"leaky_relu"`.
        sync_batchnorm: bool, synchronise BatchNorm across replicas.
        **kwargs: standard `keras.layers.Layer` arguments; `dtype` reaches
            every sublayer.

    Example:
    ```python
    head = SegmentationHead(19)
    logits = head(np.ones((1, 32, 32, 256), "float32"))  # (1, 32, 32, 19)
    ```
    """

    def __init__(
        self,
        num_classes,
        filters=256,
        dropout=0.1,
        activation="relu",
        sync_batchnorm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.filters = filters
        self.dropout = dropout
        self.activation = check_activation(activation)
        self.sync_batchnorm = sync_batchnorm
        self.hidden = ConvNormActivation(
            filters,
            3,
            use_bias=True,
            activation=activation,
            sync_batchnorm=sync_batchnorm,
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.spatial_dropout = keras.layers.SpatialDropout2D(
            dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.classifier = keras.layers.Conv2D(
            num_classes, 1, dtype=self.dtype_policy, name="classifier"
        )

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.classifier.build(self.hidden.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        x = self.hidden(inputs, training=training)
        x = self.spatial_dropout(x, training=training)
        return self.classifier(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "filters": self.filters,
                "dropout": self.dropout,
                "activation": self.activation,
                "sync_batchnorm": self.sync_batchnorm,
            }
        )
        return config
