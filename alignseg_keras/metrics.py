"""Segmentation metrics: mean IoU (the official Cityscapes evaluation), mean Dice,
Boundary IoU and trimap IoU, streaming over batches.

Every metric accepts predictions as logits/probabilities `(B, H, W, num_classes)`
or as class ids `(B, H, W)` (or a dict with "logits", AlignSeg's training
output), and labels `(B, H, W)` or `(B, H, W, 1)`. Pixels labelled
`ignore_index`, or with a label outside `[0, num_classes)`, are not counted; a
predicted id outside `[0, num_classes)` is no class: a miss of the pixel's class.
Only `keras.ops` run in `update_state`/`result`, so the metrics work on every
backend, eagerly and compiled (`model.compile(metrics=[...])`).
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import check_class_count

# Counts are kept exactly as `high * 2**20 + low` in two int32 variables: any
# backend, no float rounding and no int32 overflow (up to 2**51).
_CARRY = 2**20

# Padding below every label (and every negated label) in the window filters.
_FAR_BELOW = -(2**30)


def _class_totals(confusion, unclassified):
    """`(tp, predicted, labelled)` per class, float64, from a confusion matrix and the
    per-class counts of labelled pixels predicted as no class (or None)."""
    confusion = np.asarray(confusion, np.float64)
    labelled = confusion.sum(1)
    if unclassified is not None:
        unclassified = np.asarray(unclassified, np.float64)
        if unclassified.shape != labelled.shape:
            raise ValueError(
                f"`unclassified` has shape {unclassified.shape}; expected one count per class "
                f"{labelled.shape}."
            )
        labelled = labelled + unclassified
    return np.diag(confusion), confusion.sum(0), labelled


def iou_from_confusion(confusion, unclassified=None):
    """Per-class IoU `tp / (tp + fp + fn)` from a confusion matrix (rows = truth).

    Classes that occur neither in the labels nor in the predictions get NaN and
    are left out of the mean, as in the official Cityscapes evaluation.

    Args:
        confusion: `(C, C)` counts, rows = labels, columns = predictions.
        unclassified: optional `(C,)` counts, per class, of its labelled pixels
            predicted as no class (an id outside [0, C)): false negatives of
            that class, no class's false positives.

    Example:
    ```python
    iou_from_confusion([[3, 1], [0, 2]])  # [0.75, 0.6667]
    ```
    """
    tp, predicted, labelled = _class_totals(confusion, unclassified)
    union = predicted + labelled - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_from_confusion(confusion, unclassified=None):
    """Per-class Dice (F1) score `2 tp / (2 tp + fp + fn)` from a confusion matrix.

    Classes that occur neither in the labels nor in the predictions get NaN, as
    in `iou_from_confusion`. Per class, Dice = 2 IoU / (1 + IoU).

    Args:
        confusion: `(C, C)` counts, rows = labels, columns = predictions.
        unclassified: optional `(C,)` counts of labelled pixels predicted as no
            class, as in `iou_from_confusion`.

    Example:
    ```python
    dice_from_confusion([[3, 1], [0, 2]])  # [0.8571, 0.8]
    ```
    """
    tp, predicted, labelled = _class_totals(confusion, unclassified)
    total = predicted + labelled  # 2 tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * tp / total, np.nan)


def _static_shape(x):
    return tuple(None if d is None else int(d) for d in x.shape)


def _without_zero_weights(labelled, sample_weight, metric_name):
    """`labelled` without the pixels whose sample weight is 0 (Keras' `MeanIoU` leaves
    them out too); the weights are per image `(B,)` or per pixel `(B, H, W)` or
    `(B, H, W, 1)`."""
    if sample_weight is None:
        return labelled
    weight = ops.convert_to_tensor(sample_weight)
    shape, pixels = _static_shape(weight), _static_shape(labelled)
    if len(shape) == 4 and shape[-1] in (1, None):  # None: traced, a (B, H, W, 1) weight
        weight = weight[..., 0]
    elif len(shape) == 0 or (len(shape) in (1, 2) and (len(shape) == 1 or shape[-1] == 1)):
        weight = ops.reshape(weight, (-1, 1, 1))  # one weight per image, or for all
    elif len(shape) != 3:
        raise ValueError(f"{metric_name}: sample_weight must have shape (batch,) or "
                         f"(batch, height, width); received shape {shape}.")
    known = _static_shape(weight)
    if any(size not in (None, 1, pixel) and pixel is not None
           for size, pixel in zip(known, pixels)):
        raise ValueError(f"{metric_name}: sample_weight of shape {shape} does not match the "
                         f"labels' {pixels}; give one weight per image or per labelled pixel.")
    return ops.logical_and(labelled, ops.broadcast_to(ops.not_equal(weight, 0), ops.shape(labelled)))


def _class_ids(y_true, y_pred, num_classes, metric_name):
    """Labels and predicted ids, both `(B, H, W)` int32; ValueError on bad shapes."""
    if isinstance(y_pred, dict):
        if "logits" not in y_pred:
            raise ValueError(
                f"{metric_name}: y_pred is a dict without a 'logits' entry; keys: {sorted(y_pred)}."
            )
        y_pred = y_pred["logits"]
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    labels_shape, pred_shape = _static_shape(y_true), _static_shape(y_pred)
    if len(labels_shape) == 4 and labels_shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif len(labels_shape) != 3:
        raise ValueError(
            f"{metric_name}: labels (y_true) must have shape (batch, height, width) or "
            f"(batch, height, width, 1); received shape {labels_shape}."
        )
    if len(pred_shape) == 4:
        if pred_shape[-1] is not None and pred_shape[-1] != num_classes:
            raise ValueError(
                f"{metric_name}: y_pred has {pred_shape[-1]} channels (shape {pred_shape}) but "
                f"num_classes={num_classes}; pass scores (batch, height, width, {num_classes}) "
                "or class ids (batch, height, width)."
            )
        y_pred = ops.argmax(y_pred, axis=-1)
    elif len(pred_shape) != 3:
        raise ValueError(
            f"{metric_name}: y_pred must be scores (batch, height, width, {num_classes}) or "
            f"class ids (batch, height, width); received shape {pred_shape}."
        )
    for a, b in zip(labels_shape[:3], pred_shape[:3]):
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"{metric_name}: labels shape {labels_shape} and y_pred shape {pred_shape} "
                "differ in batch, height or width."
            )
    return ops.cast(y_true, "int32"), ops.cast(y_pred, "int32")


def _in_range(ids, num_classes):
    return ops.logical_and(ids >= 0, ids < num_classes)


def _add_exact(low_variable, high_variable, counts):
    """Adds int32 counts to the exact `high * _CARRY + low` pair of variables."""
    low = low_variable + ops.cast(counts, "int32")
    carry = low // _CARRY
    low_variable.assign(low - carry * _CARRY)
    high_variable.assign(high_variable + carry)


def _exact_float(low_variable, high_variable):
    return ops.cast(high_variable, "float32") * float(_CARRY) + ops.cast(low_variable, "float32")


def _exact_numpy(low_variable, high_variable):
    return np.asarray(high_variable, np.int64) * _CARRY + np.asarray(low_variable, np.int64)


def _class_counts(mask, classes, num_classes):
    """Per class, the number of pixels where `mask` holds, `classes` giving each pixel's class."""
    mask = ops.reshape(mask, (-1,))
    index = ops.where(mask, ops.reshape(classes, (-1,)), 0)
    # A static output size: compiles under jax.jit too (ops.bincount does not).
    return ops.segment_sum(ops.cast(mask, "int32"), index, num_segments=num_classes)


def _slice(x, axis, start, stop):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _sliding_max(x, size, axis):
    """Max over every window of `size` along `axis` ("valid": the axis shrinks by size - 1).

    Windows double in ceil(log2(size)) steps, each one `maximum` of two
    shifted slices: O(log size) work per element and a few copies of `x`.
    """
    window, result = 1, x
    while 2 * window <= size:
        result = ops.maximum(_slice(result, axis, 0, -window), _slice(result, axis, window, None))
        window *= 2
    if window < size:  # two overlapping windows of `window` cover `size`
        shift = size - window
        result = ops.maximum(_slice(result, axis, 0, -shift), _slice(result, axis, shift, None))
    return result


def _differs_within(ids, radius, outside):
    """Whether each pixel's (2 radius + 1)^2 window holds a value other than its own.

    Args:
        ids: int32 `(N, B, H, W)` maps of non-negative values, treated independently.
        radius: int >= 1.
        outside: "differs" (pixels outside the image count as another value:
            the image border is a boundary) or "ignored" (windows are cut at
            the image border).
    """
    pad = [[0, 0], [0, 0], [radius, radius], [radius, radius]]
    if outside == "differs":
        padded = ops.pad(ids, pad, constant_values=-1)
        both = ops.concatenate([padded, -padded], axis=0)
    else:
        both = ops.pad(ops.concatenate([ids, -ids], axis=0), pad, constant_values=_FAR_BELOW)
    size = 2 * radius + 1
    window_max = _sliding_max(_sliding_max(both, size, axis=2), size, axis=3)
    count = ids.shape[0]
    # max != min (min = -max(-x)): the window is not uniform.
    return ops.not_equal(window_max[:count], -window_max[count:])


class _ConfusionMetric(keras.metrics.Metric):
    """A streaming confusion matrix (rows = labels) over the pixels `_region` keeps.

    Its counts have one column more than classes: a predicted id outside
    [0, num_classes) (class ids given directly; an argmax never is) is no class,
    counted in the last column as a false negative of the pixel's class and
    nobody's false positive, as `BoundaryIoU` and the official evaluation count it.
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        # Refuses counts whose confusion matrix would not fit in memory.
        self.num_classes = check_class_count(num_classes, minimum=1)
        self.ignore_index = _check_int(ignore_index, "ignore_index", type(self).__name__)
        shape = (self.num_classes, self.num_classes + 1)
        self.low = self.add_variable(shape, initializer="zeros", dtype="int32", name="confusion_low")
        self.high = self.add_variable(shape, initializer="zeros", dtype="int32", name="confusion_high")

    def _region(self, labels):
        """Boolean `(B, H, W)` of the pixels to count besides the valid ones, or None for all."""
        return None

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch. Pixels of `sample_weight` 0 (per image `(B,)` or per pixel
        `(B, H, W)`) are not counted, as ignored ones; any other weight counts a pixel
        once (the IoU counts pixels, as the official evaluation does)."""
        labels, predictions = _class_ids(y_true, y_pred, self.num_classes, type(self).__name__)
        classes = self.num_classes
        labelled = ops.logical_and(_in_range(labels, classes), labels != self.ignore_index)
        labelled = _without_zero_weights(labelled, sample_weight, type(self).__name__)
        region = self._region(labels)
        if region is not None:
            labelled = ops.logical_and(labelled, region)
        column = ops.where(_in_range(predictions, classes), predictions, classes)
        # Index label * (C + 1) + column only for labelled pixels: no overflow, no stray bins.
        counts = _class_counts(labelled, labels * (classes + 1) + column, classes * (classes + 1))
        _add_exact(self.low, self.high, ops.reshape(counts, self.low.shape))

    def _class_totals_tensor(self):
        """`(tp, predicted, labelled)` per class as float32 tensors."""
        counts = _exact_float(self.low, self.high)
        confusion = counts[:, : self.num_classes]
        return ops.diagonal(confusion), ops.sum(confusion, axis=0), ops.sum(counts, axis=1)

    def confusion_matrix(self):
        """Exact counts `(num_classes, num_classes)`, rows = labels, columns = predictions
        (labelled pixels predicted as no class are in `unclassified_pixels()`)."""
        return _exact_numpy(self.low, self.high)[:, : self.num_classes]

    def unclassified_pixels(self):
        """Per class, its labelled pixels predicted as no class (an id outside
        [0, num_classes)), exact `(num_classes,)`: false negatives of that class."""
        return _exact_numpy(self.low, self.high)[:, self.num_classes]

    def pixel_accuracy(self):
        """The fraction of counted pixels predicted right, as a Python float; NaN with
        no pixel counted (as `per_class_iou()`)."""
        counts = _exact_numpy(self.low, self.high)
        if not counts.sum():
            return float("nan")
        return float(np.trace(counts[:, : self.num_classes]) / counts.sum())

    def counted_pixels(self):
        """How many labelled (not ignored) pixels have been counted, as a Python int."""
        return int(_exact_numpy(self.low, self.high).sum())

    def reset_state(self):
        self.low.assign(ops.zeros(self.low.shape, "int32"))
        self.high.assign(ops.zeros(self.high.shape, "int32"))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "ignore_index": self.ignore_index})
        return config


def _mean_iou_tensor(tp, predicted, labelled):
    union = predicted + labelled - tp
    present = union > 0
    iou = ops.where(present, tp / ops.maximum(union, 1.0), 0.0)
    return ops.sum(iou) / ops.maximum(ops.sum(ops.cast(present, "float32")), 1.0)


def _check_int(value, name, owner, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}: `{name}` must be an int; received {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: `{name}` must be at least {minimum}; received {value}.")
    return int(value)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class MeanIoU(_ConfusionMetric):
    """Streaming mean IoU over a confusion matrix, with an ignore label.

    Accepts predictions as logits/probabilities `(B, H, W, num_classes)` or as
    class ids `(B, H, W)`, and labels `(B, H, W)` or `(B, H, W, 1)`. Pixels
    labelled `ignore_index` are not counted. `result()` is the mean IoU over the
    classes that occur in the labels or the predictions (the official
    Cityscapes class-average IoU); `per_class_iou()`, `pixel_accuracy()` and
    `confusion_matrix()` give the rest, as NumPy values.

    Two conventions where the official script differs: with no pixel counted
    yet (every label ignored), `result()` is 0.0, as Keras' own `MeanIoU`
    gives (a NaN would stop callbacks that compare it), where the official
    script and `per_class_iou()` give NaN. An `ignore_index` inside
    `0..num_classes - 1` ignores the pixels labelled with it, but predictions
    of that class on other pixels count against it: its IoU is 0 and stays in
    the mean (Keras' `MeanIoU(ignore_class=...)` and MMSegmentation do the
    same), where the official script leaves ignored classes out of the
    evaluation. Give such labels a value outside the classes (255) to leave
    the class out.

    Args:
        num_classes: int, number of classes (at most
            `alignseg_keras.checks.MAX_CLASSES`).
        ignore_index: int, label value to ignore (255).
        name: metric name.

    Example:
    ```python
    metric = MeanIoU(num_classes=19)
    metric.update_state(labels, logits)
    metric.result()
    ```
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX, name="mean_iou", **kwargs):
        super().__init__(num_classes, ignore_index=ignore_index, name=name, **kwargs)

    def result(self):
        return _mean_iou_tensor(*self._class_totals_tensor())

    def per_class_iou(self):
        """Per-class IoU as a NumPy array; NaN for classes that never occur."""
        return iou_from_confusion(self.confusion_matrix(), self.unclassified_pixels())


@keras.saving.register_keras_serializable(package="alignseg_keras")
class MeanDice(_ConfusionMetric):
    """Streaming mean Dice (F1) score over a confusion matrix, with an ignore label.

    Per class, Dice = `2 tp / (2 tp + fp + fn)` over all pixels seen (the F1
    score of the class's pixels; `2 IoU / (1 + IoU)` of the same counts).
    `result()` is the mean over the classes that occur in the labels or the
    predictions, as `MeanIoU` averages; `per_class_dice()`,
    `confusion_matrix()` and `pixel_accuracy()` give NumPy values. Inputs as
    `MeanIoU`.

    Args:
        num_classes: int, number of classes (at most
            `alignseg_keras.checks.MAX_CLASSES`).
        ignore_index: int, label value to ignore (255).
        name: metric name.

    Example:
    ```python
    metric = MeanDice(num_classes=19)
    metric.update_state(labels, logits)
    metric.result(), metric.per_class_dice()
    ```
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX, name="mean_dice", **kwargs):
        super().__init__(num_classes, ignore_index=ignore_index, name=name, **kwargs)

    def result(self):
        tp, predicted, labelled = self._class_totals_tensor()
        total = predicted + labelled
        present = total > 0
        dice = ops.where(present, 2.0 * tp / ops.maximum(total, 1.0), 0.0)
        return ops.sum(dice) / ops.maximum(ops.sum(ops.cast(present, "float32")), 1.0)

    def per_class_dice(self):
        """Per-class Dice as a NumPy array; NaN for classes that never occur."""
        return dice_from_confusion(self.confusion_matrix(), self.unclassified_pixels())


@keras.saving.register_keras_serializable(package="alignseg_keras")
class TrimapIoU(MeanIoU):
    """Mean IoU restricted to a band ("trimap") around the ground-truth label boundaries.

    A pixel is a boundary pixel when its 3x3 neighbourhood holds another
    ground-truth label. The band holds the pixels within `width - 1` pixels
    (chessboard distance) of a boundary pixel; equivalently, the pixels whose
    `(2 width + 1) x (2 width + 1)` neighbourhood holds another label. Across a
    straight boundary the band is `width` pixels on each side (`width=1`: the
    boundary pixels themselves). The mean IoU, confusion matrix, per-class IoU
    and pixel accuracy of `MeanIoU` are computed over the band's pixels only.

    - The image border is not a boundary: neighbourhoods are cut at the border
      (an image of one label has an empty band).
    - `ignore_index` (and any label outside `[0, num_classes)`) counts as a
      label of its own: pixels next to an ignored region are boundary pixels,
      as unlabelled regions usually lie between objects. Ignored pixels
      themselves are never counted.

    Only the labels define the band; the predictions inside it are scored as
    `MeanIoU` scores them. Memory: a few int32 copies of the label batch; work
    O(log width) per pixel.

    Args:
        num_classes: int, number of classes.
        ignore_index: int, label value to ignore (255).
        width: int >= 1, the band's half width in pixels (5).
        name: metric name.

    Example:
    ```python
    metric = TrimapIoU(num_classes=19, width=5)
    metric.update_state(labels, logits)
    metric.result(), metric.per_class_iou()
    ```
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX, width=5, name="trimap_iou", **kwargs):
        super().__init__(num_classes, ignore_index=ignore_index, name=name, **kwargs)
        self.width = _check_int(width, "width", "TrimapIoU", minimum=1)

    def _region(self, labels):
        valid = ops.logical_and(_in_range(labels, self.num_classes), labels != self.ignore_index)
        ids = ops.where(valid, labels, self.num_classes)  # ignored/out of range: one more label
        return _differs_within(ops.expand_dims(ids, 0), self.width, outside="ignored")[0]

    def get_config(self):
        config = super().get_config()
        config["width"] = self.width
        return config


def boundary_dilation(height, width, dilation_ratio=0.02):
    """The Boundary IoU band width in pixels: `max(1, round(ratio * sqrt(H^2 + W^2)))`.

    The rounding is Python's (`round`, halves to even), as in the authors'
    `boundary_iou` code. 0.02 of a 1024x2048 image's diagonal is 46 pixels.

    Args:
        height, width: int, image size.
        dilation_ratio: float > 0, fraction of the image diagonal.

    Example:
    ```python
    boundary_dilation(1024, 2048)  # 46
    ```
    """
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


# Per class: pixels in both bands, in the ground-truth band, in the predicted band.
_BAND_PARTS = ("intersection", "truth", "prediction")


@keras.saving.register_keras_serializable(package="alignseg_keras")
class BoundaryIoU(keras.metrics.Metric):
    """Boundary IoU (Cheng et al., CVPR 2021) for semantic segmentation, streaming.

    For each image and class c, the boundary band of the binary mask M of c
    (in the labels, and in the predictions) is M minus its erosion by a 3x3
    square repeated d times, everything outside the image counting as
    background: the pixels of M within d pixels (chessboard distance) of a
    pixel that is not in M, or of the image border. This is the authors'
    `mask_to_boundary` (a 1-pixel zero border, `cv2.erode` with a 3x3 kernel
    `iterations=d`, mask minus erosion). Per class, the intersections and
    unions of the ground-truth band G_c and the predicted band P_c are summed
    over the dataset, pixels whose label is `ignore_index` (or outside
    `[0, num_classes)`) excluded; the class's Boundary IoU is
    `sum |G_c & P_c| / sum |G_c | P_c|`. `result()` is the mean over the
    classes with a non-zero union (0.0 while there is none, as `MeanIoU`);
    `per_class_iou()` gives NaN for the others.

    Ignored pixels are in no class's mask, in the labels and in the
    predictions alike (whatever is predicted there), so the pixels of a class
    next to an ignored region are in its band on both sides, and the metric
    depends only on what is predicted at labelled pixels: a prediction right
    at every labelled pixel scores 1, as with `MeanIoU`. (The authors'
    `mask_to_boundary` has no ignore label; taking the predicted bands on the
    whole map would put the edge of every ignored region, such as Cityscapes'
    ego vehicle, in the label band but not the predicted one.)

    The band is computed once for all classes: a pixel is in the band of its
    own class iff its (2d+1)x(2d+1) window holds another class or leaves the
    image (two window max filters). Memory: a few int32 copies of the label
    and prediction batches, whatever `num_classes` (for one 1024x2048 image
    with d = 46 about 40 MB each); work O(log d) per pixel.

    Args:
        num_classes: int, number of classes.
        ignore_index: int, label value to ignore (255).
        dilation_ratio: float > 0, band width as a fraction of the image
            diagonal, used when `dilation` is None: d = max(1, round(ratio *
            sqrt(H^2 + W^2))) (`boundary_dilation`); 0.02 as in the paper. It
            needs the image size known when the metric is traced.
        dilation: int >= 1 or None, the band width d in pixels, for every image.
        name: metric name.

    Example:
    ```python
    metric = BoundaryIoU(num_classes=19)  # d = 46 on 1024x2048 Cityscapes images
    metric.update_state(labels, logits)
    metric.result(), metric.per_class_iou()
    ```
    """

    def __init__(
        self,
        num_classes,
        ignore_index=IGNORE_INDEX,
        dilation_ratio=0.02,
        dilation=None,
        name="boundary_iou",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = check_class_count(num_classes, minimum=1)
        self.ignore_index = _check_int(ignore_index, "ignore_index", "BoundaryIoU")
        if dilation is not None:
            dilation = _check_int(dilation, "dilation", "BoundaryIoU", minimum=1)
        self.dilation = dilation
        if (
            isinstance(dilation_ratio, bool)
            or not isinstance(dilation_ratio, numbers.Real)
            or not math.isfinite(dilation_ratio)
            or dilation_ratio <= 0
        ):
            raise ValueError(
                f"BoundaryIoU: `dilation_ratio` must be a finite number > 0 (a fraction of the "
                f"image diagonal, 0.02 in the paper); received {dilation_ratio!r}."
            )
        self.dilation_ratio = float(dilation_ratio)
        for part in _BAND_PARTS:
            for half in ("low", "high"):
                variable = self.add_variable(
                    (self.num_classes,), initializer="zeros", dtype="int32", name=f"{part}_{half}"
                )
                setattr(self, f"{part}_{half}", variable)

    def _dilation_for(self, labels):
        height, width = _static_shape(labels)[1:3]
        if self.dilation is None:
            if height is None or width is None:
                raise ValueError(
                    "BoundaryIoU: the image height and width must be known when the metric is "
                    f"traced to derive the band width from dilation_ratio (labels shape "
                    f"{_static_shape(labels)}); pass `dilation=` in pixels instead."
                )
            dilation = boundary_dilation(height, width, self.dilation_ratio)
        else:
            dilation = self.dilation
        if height is not None and width is not None:
            # Beyond half the image every mask pixel is in the band: a smaller window suffices.
            dilation = min(dilation, max(height, width))
        return dilation

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch. Pixels of `sample_weight` 0 are ignored pixels; any other weight
        counts a pixel once (as `MeanIoU`)."""
        labels, predictions = _class_ids(y_true, y_pred, self.num_classes, "BoundaryIoU")
        dilation = self._dilation_for(labels)
        labelled = ops.logical_and(_in_range(labels, self.num_classes), labels != self.ignore_index)
        labelled = _without_zero_weights(labelled, sample_weight, "BoundaryIoU")
        # Ignored pixels are background in both maps: the bands then depend only on what
        # is predicted at labelled pixels, as every count does.
        predicted = ops.logical_and(_in_range(predictions, self.num_classes), labelled)
        truth = ops.where(labelled, labels, self.num_classes)
        prediction = ops.where(predicted, predictions, self.num_classes)
        band = _differs_within(ops.stack([truth, prediction]), dilation, outside="differs")
        truth_band = ops.logical_and(band[0], labelled)
        prediction_band = ops.logical_and(band[1], predicted)
        both = ops.logical_and(ops.logical_and(truth_band, prediction_band), truth == prediction)
        for part, mask, classes in (
            ("intersection", both, truth),
            ("truth", truth_band, truth),
            ("prediction", prediction_band, prediction),
        ):
            counts = _class_counts(mask, classes, self.num_classes)
            _add_exact(getattr(self, f"{part}_low"), getattr(self, f"{part}_high"), counts)

    def _tensor(self, part):
        return _exact_float(getattr(self, f"{part}_low"), getattr(self, f"{part}_high"))

    def result(self):
        intersection = self._tensor("intersection")
        union = self._tensor("truth") + self._tensor("prediction") - intersection
        present = union > 0
        iou = ops.where(present, intersection / ops.maximum(union, 1.0), 0.0)
        return ops.sum(iou) / ops.maximum(ops.sum(ops.cast(present, "float32")), 1.0)

    def band_counts(self):
        """Exact per-class counts as NumPy int64: `(intersection, truth band, predicted band)`."""
        return tuple(
            _exact_numpy(getattr(self, f"{part}_low"), getattr(self, f"{part}_high"))
            for part in _BAND_PARTS
        )

    def per_class_iou(self):
        """Per-class Boundary IoU as a NumPy array; NaN for classes whose bands are empty."""
        intersection, truth, prediction = (c.astype(np.float64) for c in self.band_counts())
        union = truth + prediction - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, intersection / union, np.nan)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, "int32"))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "ignore_index": self.ignore_index,
                "dilation_ratio": self.dilation_ratio,
                "dilation": self.dilation,
            }
        )
        return config
