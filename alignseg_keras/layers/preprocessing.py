"""Input handling inside the model: normalisation, padding and cropping."""

import keras
from keras import ops

from alignseg_keras.checks import check_positive_int


@keras.saving.register_keras_serializable(package="alignseg_keras")
class ImageNormalization(keras.layers.Layer):
    """Normalises RGB images with values 0..255: `(x - mean) / std`.

    Accepts float or integer images. Optionally reverses the channel order after
    normalising (`bgr=True`), for backbones trained on BGR input such as the
    authors' (OpenCV) models. `mean` and `std` are given in RGB order.

    Args:
        mean: three floats, per-channel mean in RGB order (0..255 scale).
        std: three floats, per-channel standard deviation in RGB order.
        bgr: bool, output channels in BGR order.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    layer = ImageNormalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    x = layer(np.full((1, 4, 4, 3), 128, "uint8"))
    ```
    """

    def __init__(self, mean, std=(1.0, 1.0, 1.0), bgr=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(
                "ImageNormalization: `mean` and `std` need 3 values (RGB); "
                f"received mean={mean!r}, std={std!r}."
            )
        if min(self.std) <= 0:
            raise ValueError(f"ImageNormalization: `std` must be positive; received {std!r}.")
        self.bgr = bool(bgr)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        x = (x - ops.array(self.mean, x.dtype)) / ops.array(self.std, x.dtype)
        return ops.flip(x, axis=-1) if self.bgr else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mean": self.mean, "std": self.std, "bgr": self.bgr})
        return config


@keras.saving.register_keras_serializable(package="alignseg_keras")
class PadToMultiple(keras.layers.Layer):
    """Zero-pads the bottom and right of `(B, H, W, C)` to multiples of `multiple`.

    Args:
        multiple: int, the height and width become multiples of it.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    padded = PadToMultiple(32)(np.ones((1, 50, 70, 3), "float32"))  # (1, 64, 96, 3)
    ```
    """

    def __init__(self, multiple=32, **kwargs):
        super().__init__(**kwargs)
        self.multiple = check_positive_int(multiple, "PadToMultiple: `multiple`")

    def call(self, inputs):
        shape = ops.shape(inputs)
        # Non-negative operands only: tf2onnx truncates the modulo of negative numbers.
        pad_h = (self.multiple - shape[1] % self.multiple) % self.multiple
        pad_w = (self.multiple - shape[2] % self.multiple) % self.multiple
        padded = ops.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        # Dynamic paddings hide every static dimension; keep the channels known
        # (TFLite's builtin Conv2D needs them).
        channels = inputs.shape[-1] if inputs.shape[-1] is not None else -1
        return ops.reshape(padded, (shape[0], shape[1] + pad_h, shape[2] + pad_w, channels))

    def compute_output_shape(self, input_shape):
        def padded(size):
            return None if size is None else -(-size // self.multiple) * self.multiple

        return (input_shape[0], padded(input_shape[1]), padded(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"multiple": self.multiple})
        return config


@keras.saving.register_keras_serializable(package="alignseg_keras")
class CropToReference(keras.layers.Layer):
    """Crops `(B, H, W, C)` to the height and width of a reference tensor (top-left).

    Args:
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[images, reference]`.

    Example:
    ```python
    cropped = CropToReference()([np.ones((1, 64, 96, 19)), np.ones((1, 50, 70, 3))])
    ```
    """

    def call(self, inputs):
        images, reference = inputs
        shape = ops.shape(reference)
        return images[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shape):
        images_shape, reference_shape = input_shape
        return (images_shape[0], reference_shape[1], reference_shape[2], images_shape[3])
