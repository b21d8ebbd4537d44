"""Small, fast AlignSeg models for tests and quick experiments."""

import keras

from alignseg_keras.models.alignseg import AlignSeg

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
