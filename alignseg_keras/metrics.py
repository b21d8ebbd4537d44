"""Mean intersection-over-union, as the official Cityscapes evaluation computes it."""

import keras
import numpy as np
from keras import ops

from alignseg_keras.checks import check_class_count

# Confusion counts are kept exactly as `high * 2**20 + low` in two int32
# variables: any backend, no float rounding and no int32 overflow (up to 2**51).
_CARRY = 2**20


def iou_from_confusion(confusion):
    """Per-class IoU `tp / (tp + fp + fn)` from a confusion matrix (rows = truth).

    Classes that occur neither in the labels nor in the predictions get NaN and
    are left out of the mean, as in the official Cityscapes evaluation.
    """
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class MeanIoU(keras.metrics.Metric):
    """Streaming mean IoU over a confusion matrix, with an ignore label.

    Accepts predictions as logits/probabilities `(B, H, W, num_classes)` or as
    class ids `(B, H, W)`, and labels `(B, H, W)` or `(B, H, W, 1)`. Pixels
    labelled `ignore_index` are not counted. `result()` is the mean IoU over the
    classes that occur in the labels or the predictions (the official
    Cityscapes class-average IoU); `per_class_iou()`, `pixel_accuracy()` and
    `confusion_matrix()` give the rest, as NumPy values.

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

    def __init__(self, num_classes, ignore_index=255, name="mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        # Refuses counts whose confusion matrix would not fit in memory.
        self.num_classes = check_class_count(num_classes, minimum=1)
        self.ignore_index = int(ignore_index)
        shape = (self.num_classes, self.num_classes)
        self.low = self.add_variable(shape, initializer="zeros", dtype="int32", name="confusion_low")
        self.high = self.add_variable(shape, initializer="zeros", dtype="int32", name="confusion_high")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]
        labels = ops.cast(y_true, "int32")
        if len(labels.shape) == 4:
            labels = ops.squeeze(labels, axis=-1)
        if len(y_pred.shape) == 4:
            y_pred = ops.argmax(y_pred, axis=-1)
        predictions = ops.cast(y_pred, "int32")
        labels = ops.reshape(labels, (-1,))
        predictions = ops.reshape(predictions, (-1,))
        valid = ops.logical_and(
            ops.logical_and(labels >= 0, labels < self.num_classes),
            ops.logical_and(predictions >= 0, predictions < self.num_classes),
        )
        valid = ops.logical_and(valid, labels != self.ignore_index)
        # Index label * C + prediction only for valid pixels: no overflow, no stray bins.
        index = ops.where(valid, labels * self.num_classes + predictions, 0)
        # A static output size: compiles under jax.jit too (ops.bincount does not).
        counts = ops.segment_sum(
            ops.cast(valid, "int32"), index, num_segments=self.num_classes**2
        )
        low = self.low + ops.reshape(ops.cast(counts, "int32"), self.low.shape)
        carry = low // _CARRY
        self.low.assign(low - carry * _CARRY)
        self.high.assign(self.high + carry)

    def result(self):
        confusion = ops.cast(self.high, "float32") * float(_CARRY) + ops.cast(self.low, "float32")
        tp = ops.diagonal(confusion)
        union = ops.sum(confusion, axis=0) + ops.sum(confusion, axis=1) - tp
        present = union > 0
        iou = ops.where(present, tp / ops.maximum(union, 1.0), 0.0)
        return ops.sum(iou) / ops.maximum(ops.sum(ops.cast(present, "float32")), 1.0)

    def confusion_matrix(self):
        """Exact counts `(num_classes, num_classes)`, rows = labels, columns = predictions."""
        return np.asarray(self.high, np.int64) * _CARRY + np.asarray(self.low, np.int64)

    def per_class_iou(self):
        """Per-class IoU as a NumPy array; NaN for classes that never occur."""
        return iou_from_confusion(self.confusion_matrix())

    def pixel_accuracy(self):
        confusion = self.confusion_matrix()
        return float(np.trace(confusion) / max(confusion.sum(), 1))

    def reset_state(self):
        self.low.assign(ops.zeros(self.low.shape, "int32"))
        self.high.assign(ops.zeros(self.high.shape, "int32"))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "ignore_index": self.ignore_index})
        return config
