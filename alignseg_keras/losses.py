"""Segmentation losses: cross-entropy with an ignore label, OHEM, deep supervision.

All losses take integer labels `(B, H, W)` (or `(B, H, W, 1)`) and logits
`(B, h, w, C)`. When the logits are smaller than the labels they are upsampled
to the label size first (bilinear, align_corners=True, as the authors' code),
so logits are compared with labels at label resolution. Only `keras.ops`.
"""

import keras
from keras import ops

from alignseg_keras.layers.alignment import resize_bilinear


def _prepare(y_true, y_pred, ignore_index):
    """Labels as int32 `(B, H, W)`, float32 logits at label size, valid-pixel mask."""
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:
        labels = ops.squeeze(labels, axis=-1)
    logits = ops.cast(y_pred, "float32")
    label_size = (ops.shape(labels)[1], ops.shape(labels)[2])
    if tuple(logits.shape[1:3]) != tuple(labels.shape[1:3]) or None in logits.shape[1:3]:
        logits = resize_bilinear(logits, label_size, align_corners=True)
    valid = ops.not_equal(labels, ignore_index)
    return ops.where(valid, labels, 0), logits, valid


def _pixel_cross_entropy(labels, logits):
    log_probs = ops.log_softmax(logits, axis=-1)
    one_hot = ops.one_hot(labels, ops.shape(logits)[-1], dtype=log_probs.dtype)
    return -ops.sum(log_probs * one_hot, axis=-1), log_probs


def _pixel_weights(labels, valid, class_weights):
    weights = ops.cast(valid, "float32")
    if class_weights is not None:
        weights = weights * ops.take(ops.convert_to_tensor(class_weights, "float32"), labels)
    return weights


def _weighted_mean(values, weights):
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1e-12)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Pixel-wise softmax cross-entropy with an ignore label and class weights.

    The mean over the valid pixels of the batch, each weighted by the weight of
    its true class (as PyTorch's `CrossEntropyLoss(weight, ignore_index)`).

    Args:
        ignore_index: int, label value that contributes nothing (255).
        class_weights: None or a list of per-class weights.
        name: loss name.

    Example:
    ```python
    loss = SegmentationCrossEntropy(ignore_index=255)
    value = loss(labels, logits)  # labels (B, H, W), logits (B, h, w, C)
    ```
    """

    def __init__(self, ignore_index=255, class_weights=None, name="segmentation_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = int(ignore_index)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        labels, logits, valid = _prepare(y_true, y_pred, self.ignore_index)
        ce, _ = _pixel_cross_entropy(labels, logits)
        return _weighted_mean(ce, _pixel_weights(labels, valid, self.class_weights))

    def get_config(self):
        config = super().get_config()
        config.update({"ignore_index": self.ignore_index, "class_weights": self.class_weights})
        return config


@keras.saving.register_keras_serializable(package="alignseg_keras")
class OhemCrossEntropy(SegmentationCrossEntropy):
    """Online hard example mining cross-entropy (paper Sec. 4.1, the code's OHEM loss).

    Among the valid pixels, keeps those whose predicted probability of the true
    class is at most `threshold`; when fewer than `min_kept` pixels qualify, the
    threshold rises to the `min_kept`-th smallest probability so that at least
    `min_kept` pixels (or all valid ones) are kept. The loss is the weighted mean
    cross-entropy over the kept pixels; the selection carries no gradient.

    Args:
        ignore_index: int, label value that contributes nothing (255).
        threshold: float, probability threshold (0.7 in the code's default).
        min_kept: int, minimum number of kept pixels per batch (100000).
        class_weights: None or a list of per-class weights.
        name: loss name.

    Example:
    ```python
    loss = OhemCrossEntropy(threshold=0.7, min_kept=100000)
    ```
    """

    def __init__(self, ignore_index=255, threshold=0.7, min_kept=100000, class_weights=None, name="ohem_cross_entropy", **kwargs):
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, name=name, **kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"OhemCrossEntropy: `threshold` must be in (0, 1]; received {threshold!r}.")
        if int(min_kept) < 0:
            raise ValueError(f"OhemCrossEntropy: `min_kept` must be >= 0; received {min_kept!r}.")
        self.threshold = float(threshold)
        self.min_kept = int(min_kept)

    def call(self, y_true, y_pred):
        labels, logits, valid = _prepare(y_true, y_pred, self.ignore_index)
        ce, _ = _pixel_cross_entropy(labels, logits)
        true_prob = ops.stop_gradient(ops.exp(-ce))
        # Invalid pixels sort last; the k-th smallest valid probability raises the threshold.
        flat = ops.reshape(ops.where(valid, true_prob, 2.0), (-1,))
        num_valid = ops.sum(ops.cast(valid, "int32"))
        k = ops.minimum(num_valid, self.min_kept)
        kth = ops.take(ops.sort(flat), ops.maximum(k - 1, 0))
        threshold = ops.where(k > 0, ops.maximum(kth, self.threshold), self.threshold)
        kept = ops.logical_and(valid, true_prob <= threshold)
        return _weighted_mean(ce, _pixel_weights(labels, kept, self.class_weights))

    def get_config(self):
        config = super().get_config()
        config.update({"threshold": self.threshold, "min_kept": self.min_kept})
        return config


def deep_supervision_loss(loss, y_true, logits, aux_logits, aux_weight=0.4):
    """`loss(y, logits) + aux_weight * loss(y, aux_logits)` (paper Sec. 3.4).

    The auxiliary head sits on the third fused feature; the authors weight it
    0.4 with OHEM and 0.1 with plain cross-entropy.
    """
    total = loss(y_true, logits)
    if aux_logits is not None and aux_weight:
        total = total + aux_weight * loss(y_true, aux_logits)
    return total
