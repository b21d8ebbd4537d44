"""The alignment function U(F, Delta) of AlignSeg (paper Eq. 2) and bilinear resizing.

Everything here uses `keras.ops` only, so it runs on every Keras backend; on
TensorFlow the forward passes of resizing and sampling call TensorFlow's fused
kernels instead (`alignseg_keras.fused_resize`, `alignseg_keras.fused_sampler`,
TF-only modules), with the same grid and weights. Sampling positions are always
computed in float32, also under a mixed-precision policy, and sampled rows are gathered from a flattened `(B * H * W, C)` table:
one gather of whole channel rows per bilinear tap is much faster than an
element-wise gather with a broadcast index.
"""

import contextlib

import keras
from keras import ops

from alignseg_keras.execution_order import computed_after
from alignseg_keras.hardware import has_accelerator
from alignseg_keras.layers.config_names import renamed_config

ALIGNMENT_MODES = ("standard", "official")


def _as_float(value):
    return ops.cast(value, "float32")


def _standard_scale(in_size, out_size):
    """(in - 1) / (out - 1): the align_corners=True scale; 1 when out == 1."""
    in_size, out_size = _as_float(in_size), _as_float(out_size)
    return ops.where(
        out_size > 1.0, (in_size - 1.0) / ops.maximum(out_size - 1.0, 1.0), 1.0
    )


def _official_scale(in_size, out_size):
    """in / (out - 1): the authors' legacy grid scale; 0 when out == 1."""
    in_size, out_size = _as_float(in_size), _as_float(out_size)
    return ops.where(
        out_size > 1.0, in_size / ops.maximum(out_size - 1.0, 1.0), 0.0
    )


def bilinear_sample(features, y, x, batched_taps=False):
    """Bilinear samples of `features` at float positions, zero outside the map.

    On TensorFlow, float16, bfloat16 and float32 features are sampled by
    TensorFlow's fused `CropAndResize` kernel (`alignseg_keras.fused_sampler`:
    one pass, interpolating in float32), except in graphs that XLA compiles;
    elsewhere, and for the gradient everywhere, by `gathered_bilinear_sample`
    in `keras.ops`.

    Args:
        features: tensor `(B, H_in, W_in, C)`.
        y: float32 tensor `(B, H_out, W_out)` of row positions in input pixels.
        x: float32 tensor `(B, H_out, W_out)` of column positions.
        batched_taps: how `gathered_bilinear_sample` sums the four taps
            (`_weighted_tap_sum`); the same values to rounding. TensorFlow's
            fused sampler, where it applies, ignores it.

    Returns:
        Tensor `(B, H_out, W_out, C)` with the dtype of `features`.
    """
    if _uses_fused_sampler(features):
        from alignseg_keras.fused_sampler import fused_bilinear_sample

        return fused_bilinear_sample(features, y, x, bilinear_sample_gradient)
    return gathered_bilinear_sample(features, y, x, batched_taps)


# Set by `portable_sampling`: trace the keras.ops sampler even on TensorFlow.
_portable_sampling_depth = 0


@contextlib.contextmanager
def portable_sampling():
    """Inside the block, `bilinear_sample` traces `gathered_bilinear_sample` on every
    backend: for exports whose converters lack TensorFlow's `CropAndResize` (LiteRT
    has no such builtin; the ONNX and int8 paths are measured with the gathers).

    Example:
    ```python
    with portable_sampling():
        model.export("alignseg.tflite", format="litert")
    ```
    """
    global _portable_sampling_depth
    _portable_sampling_depth += 1
    try:
        yield
    finally:
        _portable_sampling_depth -= 1


_BATCHED_TAP_DTYPES = ("float32", "bfloat16")


def batches_taps(training, dtype):
    """Whether `AlignmentLayer` sums the four taps in one batched product
    (`_weighted_tap_sum`): only where that was measured, on the JAX backend's
    CPU, while training, with float32 features (a step's forward and backward
    0.82x) or bfloat16 ones (0.83x; whole steps in paired processes 0.88-1.08x,
    within their spread, with 0.93-0.97x the peak memory): docs/benchmarks.md,
    "The sampler's output on JAX"; the sequential sum elsewhere. On GPUs and
    TPUs JAX's default float32 products may round to TF32 or bfloat16, and
    float16 features were not measured."""
    if keras.backend.backend() != "jax" or not training or dtype not in _BATCHED_TAP_DTYPES:
        return False
    return has_accelerator() is False


def _uses_fused_sampler(features):
    if _portable_sampling_depth or keras.backend.backend() != "tensorflow" or len(features.shape) != 4:
        return False
    from alignseg_keras.fused_sampler import fused_sampler_applies

    return fused_sampler_applies(keras.backend.standardize_dtype(features.dtype))


def _clipped_taps(features, y, x):
    """Table rows, validity masks and the fractional parts `(wy1, wx1)` of the
    positions, flattened; positions beyond one pixel outside the map only see
    zeros, and clipping them keeps the integer conversion defined for any offset."""
    batch, in_h, in_w, _ = ops.shape(features)
    y = ops.clip(y, -1.0, _as_float(in_h))
    x = ops.clip(x, -1.0, _as_float(in_w))
    y0 = ops.floor(y)
    x0 = ops.floor(x)
    index, valid = _tap_rows(batch, in_h, in_w, y0, x0)
    return index, valid, ops.reshape(y - y0, (-1,)), ops.reshape(x - x0, (-1,))


def gathered_bilinear_sample(features, y, x, batched_taps=False):
    """`bilinear_sample` in `keras.ops` on every backend: four gathers of whole
    channel rows and their weighted sum (`_weighted_tap_sum`, batched or not),
    with a hand-written gradient."""
    batch, _, _, channels = ops.shape(features)
    out_h, out_w = ops.shape(y)[1], ops.shape(y)[2]
    index, valid, wy1, wx1 = _clipped_taps(features, y, x)
    sample_rows = _sample_rows_batched_taps if batched_taps else _sample_rows
    output = sample_rows(ops.reshape(features, (-1, channels)), index, valid, wy1, wx1)
    return ops.reshape(output, (batch, out_h, out_w, channels))


def bilinear_sample_gradient(features, y, x, upstream):
    """The gradients of `gathered_bilinear_sample` with respect to `features`,
    `y` and `x`, given the output's gradient `upstream` `(B, H_out, W_out, C)`."""
    _, in_h, in_w, channels = ops.shape(features)
    index, valid, wy1, wx1 = _clipped_taps(features, y, x)
    table = ops.reshape(features, (-1, channels))
    table_grad, wy1_grad, wx1_grad = _sample_rows_gradient(
        table, index, valid, _tap_weights(valid, wy1, wx1), ops.reshape(upstream, (-1, channels))
    )
    # The clip passes the gradient of positions inside [-1, size], as TensorFlow's does.
    inside_y = ops.cast(ops.logical_and(y >= -1.0, y <= _as_float(in_h)), "float32")
    inside_x = ops.cast(ops.logical_and(x >= -1.0, x <= _as_float(in_w)), "float32")
    return (
        ops.reshape(table_grad, ops.shape(features)),
        ops.reshape(wy1_grad, ops.shape(y)) * inside_y,
        ops.reshape(wx1_grad, ops.shape(x)) * inside_x,
    )


def _tap_rows(batch, in_h, in_w, y0, x0):
    """Table rows `(4, N)` of the taps (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1),
    clipped into the map, and float32 masks `(4, N)` that are 0 for taps outside it."""
    y0 = ops.cast(y0, "int32")
    x0 = ops.cast(x0, "int32")
    base = ops.reshape(ops.arange(batch, dtype="int32") * (in_h * in_w), (-1, 1, 1))
    index, valid = [], []
    for row in (y0, y0 + 1):
        row_valid = ops.logical_and(row >= 0, row < in_h)
        row_index = base + ops.clip(row, 0, in_h - 1) * in_w
        for col in (x0, x0 + 1):
            col_valid = ops.logical_and(col >= 0, col < in_w)
            valid.append(ops.reshape(ops.logical_and(row_valid, col_valid), (-1,)))
            index.append(ops.reshape(row_index + ops.clip(col, 0, in_w - 1), (-1,)))
    return ops.stack(index), ops.cast(ops.stack(valid), "float32")


def _tap_weights(valid, wy1, wx1):
    """Bilinear weights `(4, N)` of the taps, and the row and column factors."""
    wy = (1.0 - wy1, wy1)
    wx = (1.0 - wx1, wx1)
    weights = ops.stack([wy[i] * wx[j] for i in (0, 1) for j in (0, 1)]) * valid
    return weights, wy, wx


def _rows_sampler(batched_taps):
    """`sample_rows(table, index, valid, wy1, wx1)`: `sum_t weight_t * table[index_t]`
    over the 4 taps (`_weighted_tap_sum`, batched or not), with a hand-written gradient.

    Autodiff of the 4 gathers would keep 4 gathered copies of the output for
    the backward pass and reduce over channels with slow row reductions; here
    the feature gradient is a scatter of each tap's weighted upstream copy,
    summed in float32 (`_scattered_feature_gradient`), and
    the weight gradients are channel sums computed as matrix-vector products
    (much faster than a row reduction under XLA) of re-gathered rows.
    """

    @ops.custom_gradient
    def sample_rows(table, index, valid, wy1, wx1):
        weights, wy, wx = _tap_weights(valid, wy1, wx1)
        output = _weighted_tap_sum(table, index, weights, batched_taps)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            table_grad, wy1_grad, wx1_grad = _sample_rows_gradient(
                table, index, valid, (weights, wy, wx), upstream
            )
            return table_grad, None, None, wy1_grad, wx1_grad

        return output, grad

    return sample_rows


_sample_rows = _rows_sampler(batched_taps=False)
_sample_rows_batched_taps = _rows_sampler(batched_taps=True)


def _weighted_tap_sum(table, index, weights, batched_taps):
    """`sum_t weights[t, n] * table[index[t, n]]`, `(N, C)` in `table`'s dtype.

    Sequential (`batched_taps=False`): the taps are gathered one after the other
    (`computed_after`): on TensorFlow's graph executor the 4 independent gathers
    would otherwise run first and hold 4 copies of the output at once, in the
    forward pass and again in the backward pass (docs/benchmarks.md, "Where the
    training memory goes").

    Batched (`batched_taps=True`, where `batches_taps` says): one gather of the
    four taps `(N, 4, C)` and one batched product with the weights `(N, 4)`. XLA
    fuses the sequential form's products and sums into whatever reads the
    output; in a training step that reader is the transpose before a
    convolution's kernel gradient (channels first), which then read the eight
    gathered inputs of AlignFA's two samples with a stride of C. A product's
    output is stored before it is read (docs/benchmarks.md, "The sampler's
    output on JAX").

    Args:
        table: `(R, C)` rows to sample.
        index: int32 `(4, N)` rows of the four taps.
        weights: float32 `(4, N)` bilinear weights of the taps (0 outside the map).
        batched_taps: whether to gather the four taps at once (see above).

    Returns:
        `(N, C)` in `table`'s dtype.

    Example:
    ```python
    index, valid, wy1, wx1 = _clipped_taps(features, y, x)
    weights, _, _ = _tap_weights(valid, wy1, wx1)
    rows = _weighted_tap_sum(ops.reshape(features, (-1, channels)), index, weights, False)
    ```
    """
    if batched_taps:
        rows = ops.take(table, ops.transpose(index), axis=0)
        return ops.einsum("nt,ntc->nc", ops.cast(ops.transpose(weights), rows.dtype), rows)
    output = None
    for tap in range(4):
        tap_index = index[tap] if output is None else computed_after(output, index[tap])[0]
        rows = ops.take(table, tap_index, axis=0)
        term = rows * ops.cast(ops.expand_dims(weights[tap], -1), rows.dtype)
        output = term if output is None else output + term
    return output


def _sample_rows_gradient(table, index, valid, tap_weights, upstream):
    """`_sample_rows`' gradients `(table, wy1, wx1)` for the output gradient
    `upstream` `(N, C)`; `tap_weights` is what `_tap_weights` returns."""
    weights, wy, wx = tap_weights
    tap_grad = _tap_gradients(table, index, upstream)
    tap_grad = ops.cast(tap_grad, "float32") * valid
    wy1_grad = wx[0] * (tap_grad[2] - tap_grad[0]) + wx[1] * (tap_grad[3] - tap_grad[1])
    wx1_grad = wy[0] * (tap_grad[1] - tap_grad[0]) + wy[1] * (tap_grad[3] - tap_grad[2])
    # The feature gradient once the tap gradients are done, so that its weighted
    # copies of the upstream gradient never meet their gathered rows.
    tap_weights, tap_index = computed_after(tap_grad, weights, index)
    return _scattered_feature_gradient(table, tap_index, tap_weights, upstream), wy1_grad, wx1_grad


def _scattered_feature_gradient(table, index, weights, upstream):
    """`sum_t scatter(weight_t * upstream, index_t)` into `table`'s rows, in
    `table`'s type, summed in float32 or wider.

    A row receives a term from every output pixel whose taps reach it (thousands
    for AlignCM's 3x3 context); a bfloat16 or float16 sum stops growing once its
    terms fall below half its spacing. Such gradients are summed in float32, one
    tap at a time, so that a float32 copy of the upstream gradient and one
    weighted copy are alive, not four (the four scatters cost a 512x512 bfloat16
    training step about 1.5%, and no memory). float32 and float64 gradients are
    summed in one scatter of the four weighted copies, which is faster.
    """
    num_rows = ops.shape(table)[0]
    if keras.backend.standardize_dtype(upstream.dtype) not in ("bfloat16", "float16"):
        updates = ops.expand_dims(ops.cast(weights, upstream.dtype), -1) * upstream
        channels = ops.shape(upstream)[-1]
        return ops.segment_sum(
            ops.reshape(updates, (-1, channels)), ops.reshape(index, (-1,)), num_segments=num_rows
        )
    upstream = ops.cast(upstream, "float32")
    table_grad = None
    for tap in range(4):
        (tap_index,) = computed_after(upstream if table_grad is None else table_grad, index[tap])
        term = ops.segment_sum(ops.expand_dims(weights[tap], -1) * upstream, tap_index, num_segments=num_rows)
        table_grad = term if table_grad is None else table_grad + term
    return ops.cast(table_grad, table.dtype)


def _tap_gradients(table, index, upstream):
    """`(4, N)`: d output / d weight_t summed over channels against `upstream`,
    `sum_c table[index_t, c] * upstream[:, c]`, one tap after the other."""
    ones = ops.ones((ops.shape(upstream)[-1], 1), upstream.dtype)
    sums = []
    for tap in range(4):
        # The first gather also waits, for the upstream gradient: it depends on
        # forward tensors only and would otherwise be made early and kept.
        (tap_index,) = computed_after(sums[-1] if sums else upstream, index[tap])
        rows = ops.take(table, tap_index, axis=0) * upstream
        sums.append(ops.reshape(ops.matmul(rows, ones), (-1,)))
    return ops.stack(sums)


def _resize_taps(in_size, out_size, align_corners):
    """Source indices and weights of 1-D linear interpolation."""
    positions = ops.arange(out_size, dtype="float32")
    if align_corners:
        positions = positions * _standard_scale(in_size, out_size)
        positions = ops.where(_as_float(out_size) > 1.0, positions, 0.0)
    else:
        ratio = _as_float(in_size) / _as_float(out_size)
        positions = ops.maximum((positions + 0.5) * ratio - 0.5, 0.0)
    lower = ops.floor(positions)
    weight = positions - lower
    lower = ops.minimum(ops.cast(lower, "int32"), in_size - 1)
    upper = ops.minimum(lower + 1, in_size - 1)
    return lower, upper, weight


def _interpolate_axis(x, out_size, axis, align_corners):
    lower, upper, weight = _resize_taps(ops.shape(x)[axis], out_size, align_corners)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    weight = ops.cast(ops.reshape(weight, shape), x.dtype)
    return ops.take(x, lower, axis=axis) * (1.0 - weight) + ops.take(
        x, upper, axis=axis
    ) * weight


def resize_bilinear(images, size, align_corners=True):
    """Bilinear resizing of `(B, H, W, C)` images to `size = (height, width)`.

    `align_corners=True` maps the corner pixels onto each other (PyTorch's
    `align_corners=True`); it equals `AlignmentLayer(alignment="standard")` with zero
    offsets. `align_corners=False` uses half-pixel centres (TensorFlow's and
    PyTorch's default). An output of size 1 samples the first input pixel with
    `align_corners=True`.

    On TensorFlow, float16, bfloat16 and float32 images are resized by
    TensorFlow's fused kernel (`alignseg_keras.fused_resize`: one pass forward
    and one backward, interpolating in float32), except in graphs that XLA
    compiles (its lowering of that kernel is wrong for some sizes); elsewhere
    by `separable_resize_bilinear` in `keras.ops`. Both compute the same grid
    and weights.
    """
    if _uses_fused_resize(images):
        from alignseg_keras.fused_resize import fused_resize_bilinear

        return fused_resize_bilinear(images, size, align_corners)
    return separable_resize_bilinear(images, size, align_corners)


def _uses_fused_resize(images):
    if keras.backend.backend() != "tensorflow" or len(images.shape) != 4:
        return False
    from alignseg_keras.fused_resize import fused_resize_applies

    return fused_resize_applies(keras.backend.standardize_dtype(images.dtype))


def separable_resize_bilinear(images, size, align_corners=True):
    """`resize_bilinear` in `keras.ops` on every backend: one gather and a
    linear interpolation per axis, in the dtype of `images`."""
    height, width = size
    images = _interpolate_axis(images, height, 1, align_corners)
    return _interpolate_axis(images, width, 2, align_corners)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignmentLayer(keras.layers.Layer):
    """The alignment function U(F, Delta) of AlignSeg, paper Eq. 2.

    Every output pixel (i, j) bilinearly samples the feature map F at a position
    displaced by a learned offset, with zeros outside F:
    `U(F, Delta)[i, j] = sum_{h, w} F[h, w] max(0, 1 - |y - h|) max(0, 1 - |x - w|)`.
    The output takes its size from the offsets, so one call can upsample and
    align at once.

    Alignments:
        - `"standard"` (the paper, and the authors' recommended sampler): offsets
          are in output pixels, channel 0 vertical (dy), channel 1 horizontal
          (dx); `y = (i + dy) * (H_in - 1) / (H_out - 1)` and
          `x = (j + dx) * (W_in - 1) / (W_out - 1)`. With zero offsets it is
          bilinear resizing with align_corners=True, and the identity when the
          sizes match.
        - `"official"` (what the authors' released checkpoints were trained
          with): channel 0 horizontal, channel 1 vertical, in half pixels;
          `x = j * W_in / (W_out - 1) - 0.5 + Delta[0] / 2` and
          `y = i * H_in / (H_out - 1) - 0.5 + Delta[1] / 2`. Not the identity
          at zero offsets (a slight stretch).

    Degenerate sizes: when `H_out == 1` (or `W_out == 1`) the grid has a single
    row (column) at input row (column) 0. In `"standard"` mode the offset of
    that row is then counted in input pixels (`y = dy`), so the identity still
    holds for `H_in == H_out == 1` and offsets keep their gradient; in
    `"official"` mode `y = -0.5 + Delta[1] / 2`, the limit of the authors'
    formula. With `H_in == 1` and `H_out > 1` the standard scale is 0 and every
    row samples input row 0.

    Args:
        alignment: `"standard"` or `"official"`, see above.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a list `[features, offsets]`: features `(B, H_in, W_in, C)`,
            offsets `(B, H_out, W_out, 2)`.
        training: chooses, on the JAX backend's CPU, how the sampled taps are
            summed (`batches_taps`); the values are the same to rounding.

    Returns:
        Tensor `(B, H_out, W_out, C)`.

    Example:
    ```python
    features = np.random.rand(2, 16, 16, 64).astype("float32")
    offsets = np.zeros((2, 32, 32, 2), "float32")
    upsampled = AlignmentLayer()([features, offsets])  # (2, 32, 32, 64)
    ```
    """

    def __init__(self, alignment="standard", **kwargs):
        super().__init__(**kwargs)
        if alignment not in ALIGNMENT_MODES:
            raise ValueError(
                f"AlignmentLayer: `alignment` must be one of {ALIGNMENT_MODES}; "
                f"received alignment={alignment!r}."
            )
        self.alignment = alignment

    def sampling_positions(self, features_shape, offsets):
        """Float32 `(y, x)` sampling positions, each `(B, H_out, W_out)`."""
        offsets = ops.cast(offsets, "float32")
        in_h, in_w = features_shape[1], features_shape[2]
        out_h, out_w = ops.shape(offsets)[1], ops.shape(offsets)[2]
        rows = ops.reshape(ops.arange(out_h, dtype="float32"), (1, -1, 1))
        cols = ops.reshape(ops.arange(out_w, dtype="float32"), (1, 1, -1))
        if self.alignment == "standard":
            y = (rows + offsets[..., 0]) * _standard_scale(in_h, out_h)
            x = (cols + offsets[..., 1]) * _standard_scale(in_w, out_w)
        else:
            y = rows * _official_scale(in_h, out_h) - 0.5 + offsets[..., 1] * 0.5
            x = cols * _official_scale(in_w, out_w) - 0.5 + offsets[..., 0] * 0.5
        return y, x

    def call(self, inputs, training=None):
        features, offsets = inputs
        self._check_shapes(features.shape, offsets.shape)
        y, x = self.sampling_positions(ops.shape(features), offsets)
        dtype = keras.backend.standardize_dtype(features.dtype)
        return bilinear_sample(features, y, x, batched_taps=batches_taps(training, dtype))

    def compute_output_shape(self, input_shape):
        features_shape, offsets_shape = input_shape
        self._check_shapes(features_shape, offsets_shape)
        return (features_shape[0], offsets_shape[1], offsets_shape[2], features_shape[3])

    def _check_shapes(self, features_shape, offsets_shape):
        """A `ValueError` naming the layer for shapes it cannot sample (as far as they are known)."""
        features_shape, offsets_shape = tuple(features_shape), tuple(offsets_shape)
        problem = None
        if len(features_shape) != 4 or len(offsets_shape) != 4:
            problem = "both must have rank 4"
        elif offsets_shape[3] not in (None, 2):
            problem = "offsets need 2 channels (one per axis)"
        elif None not in (features_shape[0], offsets_shape[0]) and features_shape[0] != offsets_shape[0]:
            problem = "their batch sizes differ"
        if problem:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} samples features (B, H_in, W_in, C) at "
                f"offsets (B, H_out, W_out, 2); received features {features_shape} and offsets "
                f"{offsets_shape}: {problem}."
            )

    def get_config(self):
        config = super().get_config()
        config.update({"alignment": self.alignment})
        return config

    @classmethod
    def from_config(cls, config):
        """Also reads configs with the old name `mode`."""
        return super().from_config(
            renamed_config(config, {"mode": "alignment"}, "AlignmentLayer")
        )


@keras.saving.register_keras_serializable(package="alignseg_keras")
class BilinearResize(keras.layers.Layer):
    """Bilinear resizing to the spatial size of a reference tensor.

    With `align_corners=True` (the authors' `F.interpolate(..., align_corners=True)`)
    this is `AlignmentLayer(alignment="standard")` with zero offsets, computed
    separably; `keras.ops.image.resize` offers only half-pixel centres.

    Args:
        align_corners: bool, corner-aligned (True) or half-pixel (False) grid.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a list `[images, reference]`; `images` `(B, H, W, C)` is resized
            to the height and width of `reference` `(B, H_ref, W_ref, ...)`.

    Example:
    ```python
    low = np.random.rand(1, 8, 8, 19).astype("float32")
    image = np.zeros((1, 33, 47, 3), "float32")
    logits = BilinearResize()([low, image])  # (1, 33, 47, 19)
    ```
    """

    def __init__(self, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.align_corners = bool(align_corners)

    def call(self, inputs):
        images, reference = inputs
        size = (ops.shape(reference)[1], ops.shape(reference)[2])
        return resize_bilinear(images, size, self.align_corners)

    def compute_output_shape(self, input_shape):
        images_shape, reference_shape = input_shape
        return (images_shape[0], reference_shape[1], reference_shape[2], images_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"align_corners": self.align_corners})
        return config
