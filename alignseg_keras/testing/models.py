"""Small, fast AlignSeg models and encoders for tests and quick experiments."""

import keras
import numpy as np

from alignseg_keras.config_utils import deserialized
from alignseg_keras.config_utils import set_model_dtype_policy
from alignseg_keras.models.alignseg import AlignSeg

# The levels of `TinyPyramidEncoder` by default: keras-hub's "P1".."P5", strides 2..32.
TINY_PYRAMID_LEVELS = tuple((f"P{level}", 8) for level in range(1, 6))


@keras.saving.register_keras_serializable(package="alignseg_keras.testing")
class TinyPyramidEncoder(keras.Model):
    """A tiny encoder with keras-hub's `pyramid_outputs` contract, for tests.

    A chain of stride-2 3x3 convolutions; the output of the n-th is the pyramid
    level `levels[n][0]` (stride `2^(n+1)`) with `levels[n][1]` channels.

    Args:
        levels: sequence of `(key, channels)`, one per stride-2 convolution.
        image_shape: input shape without the batch.
        dtype: the convolutions' dtype policy (None: Keras' global policy); not saved.
        **kwargs: `keras.Model` arguments.

    Example:
    ```python
    encoder = TinyPyramidEncoder()  # P1..P5 at strides 2..32, 8 channels each
    ```
    """

    def __init__(self, levels=TINY_PYRAMID_LEVELS, image_shape=(None, None, 3), dtype=None,
                 **kwargs):
        levels = tuple((str(key), int(channels)) for key, channels in levels)
        images = keras.Input(image_shape)
        pyramid, x = {}, images
        for key, channels in levels:
            x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", dtype=dtype)(x)
            pyramid[key] = x
        super().__init__(images, x, **kwargs)
        set_model_dtype_policy(self, dtype)
        self.pyramid_outputs = pyramid
        self.levels = levels
        self.image_shape = tuple(image_shape)

    def get_config(self):
        return {
            "levels": [list(level) for level in self.levels],
            "image_shape": self.image_shape,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialized(config, []))


TINY_CONFIG = dict(backbone="resnet18", decoder_channels=16, context_hidden_channels=32)


def tiny_alignseg(num_classes=3, seed=0, **kwargs):
    """A ResNet-18 AlignSeg with 16 decoder channels; builds and runs in seconds.

    Args:
        num_classes: int, number of classes.
        seed: int or None; with an int, `keras.utils.set_random_seed(seed)`
            first, so the weights are reproducible.
        **kwargs: any `AlignSeg` argument, overriding the tiny configuration.

    Example:
    ```python
    model = tiny_alignseg(num_classes=4)
    ```
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return AlignSeg(num_classes, **{**TINY_CONFIG, **kwargs})


def randomize_statistics(model, seed=0, biases=False):
    """Gives `model`'s BatchNormalizations statistics and affine weights far from their
    initial 0 and 1, as after training; with `biases`, its convolutions' biases too.

    Freshly built, every BatchNormalization is the identity and every bias zero, and
    a graph optimiser removes the addition of a constant zero: randomised weights test
    (and time) the graph of a trained model.
    """
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.3, 1.5, channels))
            layer.beta.assign(rng.normal(0.0, 0.3, channels))
            layer.moving_mean.assign(rng.normal(0.0, 0.5, channels))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, channels))
        elif biases and isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape))
