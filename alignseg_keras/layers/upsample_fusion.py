"""Feature aggregation without alignment: the paper's Table 2 baselines for AlignFA."""

import math

import keras
import numpy as np
from keras import ops

from alignseg_keras.layers.alignment import resize_bilinear

# How `UpsampleFusion` upsamples the low-resolution stream.
UPSAMPLE_FUSION_MODES = ("bilinear", "deconv")


@keras.saving.register_keras_serializable(package="alignseg_keras")
class BilinearUpsamplingKernel(keras.initializers.Initializer):
    """A transposed-convolution kernel that upsamples each channel bilinearly (FCN).

    For a kernel `(k, k, channels, channels)` with `k = 2 * stride`, channel c
    maps onto channel c with the separable weights `1 - |x - centre| / stride`
    and every other pair is zero. With `padding="same"` a stride-2 kernel of 4
    is then bilinear upsampling with half-pixel centres (`align_corners=False`)
    away from the border, where zero padding leaves 3/4 of the value.

    Example:
    ```python
    keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same",
                                 kernel_initializer=BilinearUpsamplingKernel())
    ```
    """

    def __call__(self, shape, dtype=None):
        size, width, out_channels, in_channels = shape
        if size != width or out_channels != in_channels:
            raise ValueError(
                "BilinearUpsamplingKernel needs a square kernel mapping C channels to C; "
                f"received shape {tuple(shape)}."
            )
        factor = (size + 1) // 2
        centre = factor - 1 if size % 2 == 1 else factor - 0.5
        taps = 1.0 - np.abs(np.arange(size) - centre) / factor
        kernel = np.zeros(shape, "float32")
        kernel[:, :, np.arange(in_channels), np.arange(in_channels)] = np.outer(taps, taps)[
            :, :, None
        ]
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


def _shortfall(target, size):
    """`max(target - size, 0)`: a Python int where both sizes are known (JAX traces
    need static padding), else a tensor (TensorFlow graphs of unknown size)."""
    if isinstance(target, int) and isinstance(size, int):
        return max(target - size, 0)
    return ops.maximum(target - size, 0)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class UpsampleFusion(keras.layers.Layer):
    """Upsamples a low-resolution feature F to a high-resolution A and sums them.

    The aggregation baselines of the paper's Table 2, in AlignFA's place:

    - `fusion="bilinear"`: `out = A + up(F)`, bilinear upsampling with
      align_corners=True as the authors' code upsamples ("regular grid
      sampling", RGS, Table 2; "neither" in Table 3). No weights. It equals
      AlignFA with zero offsets in `"standard"` alignment.
    - `fusion="deconv"`: `out = A + deconv(F)`, learned upsampling: one
      transposed convolution per factor of 2 (kernel 4, stride 2, `"same"`
      padding, no bias, C to C channels, no normalisation between them),
      initialised as bilinear upsampling (`BilinearUpsamplingKernel`), so that
      training starts, like AlignFA's, from a fixed upsampling + sum: not the
      RGS one exactly (half-pixel centres rather than align_corners=True, 3/4
      of the value at the border, and for factors 4 and 8 a chain of bilinear
      steps, smoother than one bilinear upsampling by that factor). The
      result, `upsampling_factor` times the size of F, is cropped at the
      bottom and right (or zero-padded there, for encoders whose strides do
      not divide evenly) to the size of A: pixel j of F stays at pixels
      `factor * j ...` of A, the geometry of "same"-padded encoders and of the
      deep-stem encoder's ceil-mode sizes alike. Costs
      `16 * C^2 * log2(factor)` weights.

    Args:
        fusion: `"bilinear"` or `"deconv"`.
        upsampling_factor: int, a power of 2: the stride ratio between F and A
            (2, 4 or 8 into AlignSeg's stride-4 stream). Used by `"deconv"`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `[high_resolution, low_resolution]`, `(B, H, W, C)` and
            `(B, h, w, C)`.

    Example:
    ```python
    fine = np.random.rand(1, 64, 64, 16).astype("float32")
    coarse = np.random.rand(1, 16, 16, 16).astype("float32")
    fused = UpsampleFusion("deconv", upsampling_factor=4)([fine, coarse])  # (1, 64, 64, 16)
    ```
    """

    def __init__(self, fusion="bilinear", upsampling_factor=2, **kwargs):
        super().__init__(**kwargs)
        if fusion not in UPSAMPLE_FUSION_MODES:
            raise ValueError(
                f"UpsampleFusion: `fusion` must be one of {UPSAMPLE_FUSION_MODES}; "
                f"received fusion={fusion!r}."
            )
        factor = int(upsampling_factor)
        if factor < 1 or factor & (factor - 1):
            raise ValueError(
                "UpsampleFusion: `upsampling_factor` must be a power of 2; received "
                f"upsampling_factor={upsampling_factor!r}."
            )
        self.fusion = fusion
        self.upsampling_factor = factor
        self.deconvolutions = []

    def build(self, input_shape):
        high_shape, low_shape = input_shape
        if high_shape[-1] != low_shape[-1]:
            raise ValueError(
                "UpsampleFusion: both inputs must have the same number of channels; "
                f"received {high_shape[-1]} and {low_shape[-1]}."
            )
        if self.fusion != "deconv":
            return
        channels = low_shape[-1]
        shape = tuple(low_shape)
        for stage in range(int(math.log2(self.upsampling_factor))):
            deconvolution = keras.layers.Conv2DTranspose(
                channels,
                4,
                strides=2,
                padding="same",
                use_bias=False,
                kernel_initializer=BilinearUpsamplingKernel(),
                dtype=self.dtype_policy,
                name=f"deconv{stage + 1}",
            )
            deconvolution.build(shape)
            shape = deconvolution.compute_output_shape(shape)
            self.deconvolutions.append(deconvolution)

    def call(self, inputs):
        high, low = inputs
        height, width = ops.shape(high)[1], ops.shape(high)[2]
        if self.fusion == "bilinear":
            return high + resize_bilinear(low, (height, width))
        for deconvolution in self.deconvolutions:
            low = deconvolution(low)
        low = low[:, :height, :width]
        missing_rows = _shortfall(height, ops.shape(low)[1])
        missing_cols = _shortfall(width, ops.shape(low)[2])
        low = ops.pad(low, [[0, 0], [0, missing_rows], [0, missing_cols], [0, 0]])
        return high + low

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update({"fusion": self.fusion, "upsampling_factor": self.upsampling_factor})
        return config
