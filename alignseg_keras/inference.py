"""Test-time prediction: whole image, sliding window, multi-scale with flip.

Every function takes a batch of RGB images `(B, H, W, 3)` with values 0..255
(uint8 or float), or a single image `(H, W, 3)`, and returns per-pixel class
probabilities (float32, softmax over the last axis) at the input size, with
the same leading shape as the input. Images with a NaN or infinite value are
refused with a `ValueError` naming the image; an empty batch or 0-sized images
give empty probabilities `(B, H, W, classes)` without running the model.

The network runs through `model.predict_on_batch`, Keras' compiled predict
step: every sliding-window tile has the same shape, so the step is traced
once per tile shape rather than once per image, and tiles from all images of
the batch are stacked `batch_size` at a time. Overlapping windows, flipped
copies and scales are combined by averaging logits (the paper's sliding-window
test averages overlapping logits); the softmax comes last.

The paper's test-time settings (Cityscapes): sliding windows of 769x769 with
1/3 overlap on full 1024x2048 images, and for multi-scale testing the scales
0.75, 1.0, 1.25, 1.5, 1.75 with horizontal flip:

```python
probabilities = predict_multiscale(model, images, scales=PAPER_SCALES, flip=True,
                                   sliding=769)
labels = probabilities.argmax(-1)
```

Precision: every function takes `precision=None` (run the model as it is),
`"float32"` or `"bfloat16"`. `"bfloat16"` runs a copy of the model under
Keras' `mixed_bfloat16` policy (see `as_precision`): float32 weights,
bfloat16 arithmetic, float32 logits and probabilities, with BatchNormalization
folded into the convolutions (`inference_model`). It pays off where the
hardware has bfloat16 units (GPUs; CPUs with AMX or AVX512-BF16), at a small
cost in accuracy; docs/inference.md ("When to use bfloat16") gives the
measurements. The copy is made on every call; to predict many batches,
convert once:

```python
fast = inference_model(model, "bfloat16")
for batch in batches:
    probabilities = predict_whole(fast, batch)
```

On TensorFlow, `frozen_inference.FrozenInferenceModel(model, precision)`
makes the weights constants of the graph, which lets oneDNN keep its
reordered kernels between calls: faster on a CPU for small images and tiles
(5-10% at 512x512, none at 1024x2048), after a one-off cost of some seconds
and with more memory. Every function here takes it in place of the model.
"""

import math

import keras
import numpy as np
from keras import ops

from alignseg_keras.checks import check_finite_images
from alignseg_keras.checks import check_image_dtype
from alignseg_keras.checks import check_positive_int
from alignseg_keras.checks import first_non_finite_weight
from alignseg_keras.checks import scale_warning_of
from alignseg_keras.config_utils import global_dtype_policy
from alignseg_keras.config_utils import replaced_policy
from alignseg_keras.layers.alignment import resize_bilinear

PAPER_SCALES = (0.75, 1.0, 1.25, 1.5, 1.75)
PAPER_OVERLAP = 1.0 / 3.0
DEFAULT_BATCH_SIZE = 4

# Inference precisions, and the Keras dtype policy each runs the model under.
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
PRECISIONS = tuple(PRECISION_POLICIES)


def check_precision(precision):
    """`precision` if it is one of `PRECISIONS`, else a `ValueError` listing them."""
    if not isinstance(precision, str) or precision not in PRECISION_POLICIES:
        raise ValueError(
            f"`precision` must be one of {', '.join(PRECISIONS)}; received {precision!r}."
        )
    return precision


def as_precision(model, precision):
    """`model` computing in `precision`: itself if it already does, else a copy.

    `"bfloat16"` gives the model as it is built under Keras' `mixed_bfloat16`
    policy: variables in float32 (the copy's weights equal the original's
    exactly), convolutions and most arithmetic in bfloat16. Keras computes
    BatchNormalization's statistics in float32; AlignSeg computes the
    alignment modules' sampling positions in float32 (only the sampled
    features are bfloat16), and its logits leave the model in float32.
    `"float32"` turns a mixed-precision model back into a float32 one.

    The copy is built from `model.get_config()` with every dtype policy equal
    to the model's own replaced by the target (layers pinned to another dtype
    keep it), under the target as Keras' global policy (so layers a model
    builds in its constructor follow it), then given `model`'s weights. It is
    not compiled, and does not follow later changes of `model`'s weights.

    Args:
        model: a Keras model, such as `AlignSeg`, that `from_config` rebuilds.
        precision: `"float32"` or `"bfloat16"`.

    Returns:
        A Keras model with the dtype policy `"float32"` or `"mixed_bfloat16"`.

    Example:
    ```python
    fast = as_precision(model, "bfloat16")
    probabilities = predict_whole(fast, images)  # float32 probabilities
    ```
    """
    policy = PRECISION_POLICIES[check_precision(precision)]
    source = model.dtype_policy.name
    if source == policy:
        return model
    if source not in PRECISION_POLICIES.values():
        raise ValueError(
            f"as_precision converts float32 and mixed_bfloat16 models; {model.name} has the "
            f"dtype policy {source!r}."
        )
    return copy_model(model, policy)


def copy_model(model, policy=None):
    """A copy of `model` rebuilt from its config and given its weights.

    Every dtype policy equal to the model's own is set to `policy` (default:
    the model's own), and the copy is built under `policy` as Keras' global
    policy, so that layers a model builds in its constructor follow it rather
    than whatever the global policy is now.
    """
    source = model.dtype_policy.name
    policy = policy or source
    config = replaced_policy(keras.saving.serialize_keras_object(model), source, policy)
    with global_dtype_policy(policy):
        clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(model.get_weights())
    return clone


def inference_model(model, precision):
    """`model` prepared for inference in `precision`, as the inference functions run it.

    `as_precision(model, precision)`; in bfloat16 also with BatchNormalization
    folded into the convolutions before it (`batch_norm_folding`): TensorFlow
    folds them itself in float32 but not in bfloat16, where folding makes
    AlignSeg-R101's inference a few percent faster (docs/benchmarks.md). Returns
    a copy in bfloat16 (the folded weights must not change `model`), else what
    `as_precision` returns.
    """
    from alignseg_keras.batch_norm_folding import fold_in_place

    converted = as_precision(model, precision)
    if precision != "bfloat16":
        return converted
    if converted is model:
        converted = copy_model(model)
    fold_in_place(converted)
    return converted


def _with_precision(model, precision):
    """`model` in `precision` (`inference_model`); a model frozen in one precision
    (`frozen_inference.FrozenInferenceModel`) as it is, if that is `precision`."""
    if precision is None:
        return model
    frozen_precision = None if isinstance(model, keras.Model) else getattr(model, "precision", None)
    if frozen_precision is None:
        return inference_model(model, precision)
    if frozen_precision != precision:
        raise ValueError(
            f"{model.name} computes in {frozen_precision}, frozen; received precision="
            f"{precision!r}. Freeze the Keras model in {precision}, or pass precision=None."
        )
    return model


def _as_image_batch(images, model):
    """Returns `(images (B, H, W, 3), was_single_image)`, or raises a clear error.

    Non-finite pixels are refused; an empty batch or 0-sized images pass (the
    predict functions return empty probabilities for them). Images in another
    scale than `model` normalises (its `normalization`) are warned about.
    """
    images = np.asarray(images)
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "`images` must be RGB images of shape (batch, height, width, 3) or "
            f"(height, width, 3); received shape {images.shape}."
        )
    check_image_dtype(images.dtype)
    check_finite_images(images)
    scale_warning = scale_warning_of(getattr(model, "normalization", None))
    if scale_warning is not None:
        scale_warning(images)
    return images, single


def output_classes(model):
    """The number of classes `model` predicts: its `num_classes`, else its output's last axis."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        num_classes = keras.tree.flatten(model.outputs)[0].shape[-1]
    return int(num_classes)


def input_image_size(model):
    """`(height, width)` of the images `model` takes, None where it takes any: an
    encoder of one input size (keras-hub's MiTBackbone) fixes both, and a graph
    traced for other sizes fails inside it."""
    image_size = getattr(model, "image_size", None)  # a FrozenInferenceModel's
    if image_size is not None:
        return tuple(image_size)
    inputs = getattr(model, "inputs", None) or [None]
    size = tuple(getattr(inputs[0], "shape", (None, None, None))[1:3])
    return size if len(size) == 2 else (None, None)


def float_image_signature(model, name="images"):
    """The input signature of a file that takes float32 images `[batch, height, width,
    3]` (0..255) at the model's size (`input_image_size`), as the ONNX and LiteRT
    exports write them (`export.export_model`, `AlignSeg.export`)."""
    return [keras.InputSpec(shape=(None, *input_image_size(model), 3), dtype="float32", name=name)]


def _empty_probabilities(model, images, single):
    """Probabilities for an empty batch or 0-sized images: zeros of shape (B, H, W, classes)."""
    probabilities = np.zeros(images.shape[:3] + (output_classes(model),), "float32")
    return probabilities[0] if single else probabilities


def check_tile_size(tile_size):
    """`tile_size` as a pair of positive ints `(height, width)`, or a `ValueError`.

    Example:
    ```python
    check_tile_size(769)  # (769, 769)
    ```
    """
    pair = (tile_size, tile_size) if np.isscalar(tile_size) else tuple(tile_size)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(
            "`tile_size` must be a positive int or a pair (height, width) of "
            f"positive ints; received {tile_size!r}."
        )
    return int(pair[0]), int(pair[1])


def check_scales(scales):
    """`scales` as a tuple of the multi-scale test, or a `ValueError` unless they are
    positive finite numbers (one at least; a single number is one scale).

    Example:
    ```python
    check_scales([0.75, 1.0, 1.25])  # (0.75, 1.0, 1.25)
    ```
    """
    scales = (scales,) if np.isscalar(scales) else tuple(scales)
    if not scales or not all(_is_positive_finite(scale) for scale in scales):
        raise ValueError(f"`scales` must be positive finite numbers; received {scales!r}.")
    return scales


def _is_positive_finite(value):
    try:
        return bool(0 < value < np.inf)
    except TypeError:  # text, None
        return False


def _check_batch_size(batch_size):
    return check_positive_int(batch_size, "`batch_size`")


def _softmax(logits, single, model):
    _check_finite_logits(logits, model)
    probabilities = ops.convert_to_numpy(ops.softmax(logits, axis=-1)).astype("float32")
    return probabilities[0] if single else probabilities


def _check_finite_logits(logits, model):
    """Raises a `ValueError` when `logits` hold NaN or +infinity, saying why: the argmax
    of NaN logits is class 0, a prediction that looks plausible (a model with one NaN
    weight scored a higher mIoU than the model before). A logit of -infinity (a class
    masked out) has a probability of 0 and passes."""
    bad = np.isnan(logits) | np.isposinf(logits)
    if not bad.any():
        return
    count = int(np.count_nonzero(bad))
    weight = first_non_finite_weight(model)
    if weight:
        reason = (f"its weight {weight} holds NaN or infinity (a diverged training saved as it "
                  "was, or a damaged conversion)")
    elif getattr(model, "weights", None):
        reason = ("its weights are finite: the computation overflowed on these images (in "
                  "bfloat16 or float16, predict in float32)")
    else:  # a FrozenInferenceModel: look at the weights of the model it was frozen from
        reason = ("check the weights of the model it was made from "
                  "(checks.first_non_finite_weight), or predict in float32")
    raise ValueError(f"The model's logits hold {count} NaN or +infinite value(s) of "
                     f"{bad.size}: {reason}. No prediction is made from them.")


def _padding_colour(model):
    """The RGB value the model normalises to zero: its mean, else black.

    PSPNet/CCNet-style evaluation code pads normalised images with zeros,
    i.e. with the mean colour.
    """
    normalization = getattr(model, "normalization", None) or {}
    return np.asarray(normalization.get("mean", (0.0, 0.0, 0.0)), "float32")


def _model_logits(model, images, batch_size):
    """Float32 logits of `model` for same-size `images`, `batch_size` at a time."""
    logits = [
        ops.convert_to_numpy(model.predict_on_batch(images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(logits).astype("float32", copy=False)


def window_starts(size, tile, overlap=PAPER_OVERLAP):
    """Start offsets of the sliding windows along one axis.

    Windows advance by `ceil(tile * (1 - overlap))`; the last one is shifted
    back to end at the border, so every window lies inside the image (the
    scheme of PSPNet/CCNet-style evaluation code). An image no larger than
    the tile has one window.

    Args:
        size: int, image size along the axis.
        tile: int, window size along the axis.
        overlap: float in [0, 1), fraction of a window shared with the next.

    Example:
    ```python
    window_starts(1024, 769)  # [0, 255]
    window_starts(2048, 769)  # [0, 513, 1026, 1279]
    ```
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"`overlap` must be in [0, 1); received {overlap!r}.")
    if size <= tile:
        return [0]
    stride = math.ceil(tile * (1.0 - overlap))
    count = math.ceil((size - tile) / stride) + 1
    return [min(index * stride, size - tile) for index in range(count)]


def _sliding_logits(model, images, tile_size, overlap, batch_size):
    """Logits averaged over overlapping windows, `(B, H, W, classes)`.

    Windows of every image are gathered into batches of `batch_size` tiles of
    exactly `tile_size`; an image smaller than the tile is padded at the bottom
    and right with the model's mean colour, and the padding is cropped off.
    """
    batch, height, width, _ = images.shape
    tile_h, tile_w = tile_size
    crop_h, crop_w = min(tile_h, height), min(tile_w, width)
    windows = [
        (y, x)
        for y in window_starts(height, tile_h, overlap)
        for x in window_starts(width, tile_w, overlap)
    ]
    tiles = [(index, y, x) for index in range(batch) for y, x in windows]
    counts = np.zeros((height, width, 1), "float32")
    for y, x in windows:
        counts[y : y + crop_h, x : x + crop_w] += 1.0
    padding = _padding_colour(model)
    total = None
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        inputs = np.empty((len(chunk), tile_h, tile_w, 3), "float32")
        inputs[...] = padding
        for k, (index, y, x) in enumerate(chunk):
            inputs[k, :crop_h, :crop_w] = images[index, y : y + crop_h, x : x + crop_w]
        logits = ops.convert_to_numpy(model.predict_on_batch(inputs))
        if total is None:
            total = np.zeros((batch, height, width, logits.shape[-1]), "float32")
        for k, (index, y, x) in enumerate(chunk):
            total[index, y : y + crop_h, x : x + crop_w] += logits[k, :crop_h, :crop_w]
    return total / counts


def predict_whole(model, images, batch_size=DEFAULT_BATCH_SIZE, precision=None):
    """Class probabilities from one forward pass over each whole image.

    Args:
        model: a Keras model from RGB images (0..255) to logits
            `(B, H, W, classes)` at the input size, such as `AlignSeg`, or a
            `FrozenInferenceModel` of one.
        images: `(B, H, W, 3)` or `(H, W, 3)` array, uint8 or float.
        batch_size: int, images per forward pass.
        precision: None to run `model` as it is, or `"float32"` or
            `"bfloat16"` to run it in that precision (`as_precision`).

    Returns:
        float32 probabilities `(B, H, W, classes)` (or `(H, W, classes)`).

    Example:
    ```python
    probabilities = predict_whole(model, images)  # images: (8, 512, 1024, 3) uint8
    labels = probabilities.argmax(-1)
    ```
    """
    images, single = _as_image_batch(images, model)
    batch_size = _check_batch_size(batch_size)
    if precision is not None:
        check_precision(precision)
    if images.size == 0:
        return _empty_probabilities(model, images, single)
    model = _with_precision(model, precision)
    return _softmax(_model_logits(model, images, batch_size), single, model)


def predict_sliding(
    model,
    images,
    tile_size,
    overlap=PAPER_OVERLAP,
    batch_size=DEFAULT_BATCH_SIZE,
    precision=None,
):
    """Class probabilities from overlapping windows (the paper's single-scale test).

    Windows of `tile_size` advance by `ceil(tile * (1 - overlap))`, the last
    one ending at the border (see `window_starts`); their logits are averaged
    where they overlap. An image smaller than a tile is padded with the
    model's mean colour and the padding cropped off. Tiles of all images are
    batched together, `batch_size` per forward pass.

    Args:
        model: a Keras model from RGB images (0..255) to logits at input size,
            or a `FrozenInferenceModel` of one.
        images: `(B, H, W, 3)` or `(H, W, 3)` array, uint8 or float.
        tile_size: int or `(height, width)`, window size (769 in the paper).
        overlap: float in [0, 1), fraction shared by neighbouring windows (1/3).
        batch_size: int, tiles per forward pass.
        precision: None to run `model` as it is, or `"float32"` or
            `"bfloat16"` to run it in that precision (`as_precision`).

    Returns:
        float32 probabilities `(B, H, W, classes)` (or `(H, W, classes)`).

    Example:
    ```python
    probabilities = predict_sliding(model, image, tile_size=769)  # (1024, 2048, 19)
    ```
    """
    images, single = _as_image_batch(images, model)
    tile_size, batch_size = check_tile_size(tile_size), _check_batch_size(batch_size)
    if precision is not None:
        check_precision(precision)
    if images.size == 0:
        return _empty_probabilities(model, images, single)
    model = _with_precision(model, precision)
    return _softmax(_sliding_logits(model, images, tile_size, overlap, batch_size), single, model)


def _scaled_size(size, scale):
    """`round(size * scale)`, halves to even, at least 1: the size that
    `scipy.ndimage.zoom`, which the authors' multi-scale test resizes with, gives."""
    return max(1, round(size * scale))


def predict_multiscale(
    model,
    images,
    scales=PAPER_SCALES,
    flip=True,
    sliding=None,
    overlap=PAPER_OVERLAP,
    batch_size=DEFAULT_BATCH_SIZE,
    precision=None,
):
    """Class probabilities averaged over image scales and horizontal flips.

    Each image is resized by every scale (bilinear, align_corners=True),
    predicted whole or with sliding
    windows, and its logits resized back to the input size; with `flip` the
    mirrored image is predicted too (in the same batches) and its logits
    mirrored back. All logits are averaged, then the softmax is taken.

    Args:
        model: a Keras model from RGB images (0..255) to logits at input size,
            or a `FrozenInferenceModel` of one.
        images: `(B, H, W, 3)` or `(H, W, 3)` array, uint8 or float.
        scales: positive floats (the paper: 0.75, 1.0, 1.25, 1.5, 1.75).
        flip: bool, also average the horizontally flipped prediction.
        sliding: None to predict each scaled image whole, or a tile size
            (int or `(height, width)`) for sliding windows at every scale.
        overlap: float, window overlap when `sliding` is set.
        batch_size: int, images (or tiles) per forward pass.
        precision: None to run `model` as it is, or `"float32"` or
            `"bfloat16"` to run it in that precision (`as_precision`).

    Returns:
        float32 probabilities `(B, H, W, classes)` (or `(H, W, classes)`).

    Example:
    ```python
    probabilities = predict_multiscale(model, image, sliding=769)  # paper's MS+flip
    ```
    """
    images, single = _as_image_batch(images, model)
    batch_size = _check_batch_size(batch_size)
    tile_size = None if sliding is None else check_tile_size(sliding)
    scales = check_scales(scales)
    if precision is not None:
        check_precision(precision)
    if images.size == 0:
        return _empty_probabilities(model, images, single)
    model = _with_precision(model, precision)
    batch, height, width, _ = images.shape
    if flip:
        images = np.concatenate([images, np.flip(images, axis=2)])
    total = 0.0
    for scale in scales:
        size = (_scaled_size(height, scale), _scaled_size(width, scale))
        scaled = images
        if size != (height, width):
            scaled = ops.convert_to_numpy(
                resize_bilinear(images.astype("float32"), size, align_corners=True)
            )
        if tile_size is None:
            logits = _model_logits(model, scaled, batch_size)
        else:
            logits = _sliding_logits(model, scaled, tile_size, overlap, batch_size)
        if size != (height, width):
            logits = ops.convert_to_numpy(
                resize_bilinear(logits, (height, width), align_corners=True)
            )
        total = total + logits
    if flip:
        total = (total[:batch] + np.flip(total[batch:], axis=2)) / 2.0
    return _softmax(total / len(scales), single, model)
