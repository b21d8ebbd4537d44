"""Segmentation losses: cross-entropy with an ignore label, OHEM, Dice, focal,
Lovász-Softmax, weighted sums of them, and deep supervision.

All losses take integer labels `(B, H, W)` (or `(B, H, W, 1)`) and logits
`(B, h, w, C)`. When the logits are smaller than the labels they are upsampled
to the label size first (bilinear, align_corners=True, as the authors' code),
so logits are compared with labels at label resolution. Only `keras.ops`
(and NumPy, for checking labels given as NumPy arrays).
"""

import math
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import fraction_error
from alignseg_keras.checks import label_value_error
from alignseg_keras.distribute import replicas_in_sync
from alignseg_keras.layers.alignment import resize_bilinear


def _prepare(y_true, y_pred, ignore_index):
    """Labels as int32 `(B, H, W)`, float32 logits at label size, valid-pixel mask.

    Valid pixels hold a class id in [0, C). In tensors, whose values a traced
    step cannot check, another label than a class id or `ignore_index` is left
    out as the ignore label is, in every loss and on every backend (it had
    counted as a valid pixel of loss 0, diluting the mean); NumPy labels with
    one are refused before (`_check_numpy_labels`).

    The logits of left-out pixels are replaced by zeros, so that a NaN or an
    infinity there (an overflow in padding, say) reaches neither the loss nor its
    gradient: a weight of zero would not stop it (0 x inf is NaN).
    """
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:
        labels = ops.squeeze(labels, axis=-1)
    logits = ops.cast(y_pred, "float32")
    _check_logits_shape(labels.shape, logits.shape)
    num_classes = ops.shape(logits)[-1]
    label_size = (ops.shape(labels)[1], ops.shape(labels)[2])
    if tuple(logits.shape[1:3]) != tuple(labels.shape[1:3]) or None in logits.shape[1:3]:
        logits = resize_bilinear(logits, label_size, align_corners=True)
    class_ids = ops.logical_and(labels >= 0, labels < num_classes)
    valid = ops.logical_and(ops.not_equal(labels, ignore_index), class_ids)
    logits = ops.where(ops.expand_dims(valid, -1), logits, 0.0)
    return ops.where(valid, labels, 0), logits, valid


def _check_numpy_labels(y_true, y_pred, ignore_index):
    """A `ValueError` naming the values of NumPy labels that are neither a class id nor
    `ignore_index`, or fractional (masks divided by 255), as `fit` and `evaluate` refuse
    such masks; tensors pass (`_prepare`)."""
    classes = getattr(y_pred, "shape", (None,))[-1]
    if not isinstance(y_true, np.ndarray) or classes is None:
        return
    error = fraction_error(y_true, classes, ignore_index) if y_true.dtype.kind == "f" else None
    error = error or label_value_error(y_true, classes, "`y_true`", ignore_index)
    if error is not None:
        raise error


def _check_logits_shape(label_shape, logit_shape):
    """A `ValueError` for logits that are not `(B, h, w, C)` at or below the labels' size.

    Larger logits were downsampled, and channels-first logits `(B, C, H, W)`
    (PyTorch's layout) resized as an `(H, W)`-class map of height C, without a word.
    """
    labels, logits = tuple(label_shape[1:3]), tuple(logit_shape[1:3])
    if len(logit_shape) != 4 or None in labels or None in logits or logits == labels:
        return
    hint = ""
    if tuple(logit_shape[2:4]) == labels:  # (B, C, H, W), unless a map of the labels' shape
        hint = " They look channels-first (batch, classes, height, width): move the classes last."
    if (hint and _aspect_change(logits, labels) > 2.5) or logits[0] > labels[0] or logits[1] > labels[1]:
        raise ValueError(
            f"The logits {tuple(logit_shape)} do not fit the labels {tuple(label_shape)}: "
            "logits are (batch, height, width, classes), at the labels' height and width or "
            f"smaller (then upsampled to them).{hint}"
        )


def _aspect_change(size, reference):
    """How many times the height-to-width ratio of `size` differs from `reference`'s: a
    network's smaller logits keep the labels' (up to rounding), channels-first logits
    `(C, H)` of labels `(H, W)` rarely do."""
    ratio = (size[0] * reference[1]) / max(size[1] * reference[0], 1)
    return max(ratio, 1 / ratio) if ratio > 0 else float("inf")


def _pixel_cross_entropy(labels, logits):
    """`-log softmax(logits)[label]` per pixel, for labels in [0, C) (`_prepare`'s).

    `ops.sparse_categorical_crossentropy` is one fused op on TensorFlow
    (`SparseSoftmaxCrossEntropyWithLogits`), which keeps only its gradient for
    the backward pass; `log_softmax` times a one-hot kept three full-size
    copies of the logits (0.19 GiB more for the two heads at 512x512, batch 2).
    """
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def _pixel_weights(labels, valid, class_weights):
    weights = ops.cast(valid, "float32")
    if class_weights is not None:
        weights = weights * ops.take(ops.convert_to_tensor(class_weights, "float32"), labels)
    return weights


def _weighted_mean(values, weights):
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1e-12)


def _pixel_sample_weights(sample_weight, labels):
    """Keras' `sample_weight`, per image `(B,)` or per pixel `(B, H, W[, 1])`, as `(B, H, W)` factors.

    Also for weights whose rank is known only at run time (Keras relaxes the
    traced shapes when a step sees both kinds).
    """
    weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    try:
        rank = len(weights.shape)
    except (TypeError, ValueError):  # a rank known only at run time
        rank = None
    if rank is not None and rank not in (1, 3) and not (rank == 4 and weights.shape[-1] == 1):
        replicas = replicas_in_sync()
        share = f" (one of {replicas} replicas' share of the batch)" if replicas > 1 else ""
        raise ValueError(
            "A segmentation loss takes `sample_weight` per image (batch,) or per pixel "
            f"(batch, height, width) at the labels' size; received shape {tuple(weights.shape)}{share}."
        )
    if rank in (3, 4) and None not in (*weights.shape[1:3], *labels.shape[1:3]) and (
            tuple(weights.shape[1:3]) != tuple(labels.shape[1:3])):
        raise ValueError(
            "A per-pixel `sample_weight` must have the labels' height and width "
            f"{tuple(labels.shape[1:3])}; received shape {tuple(weights.shape)}."
        )
    batch, height, width = ops.shape(labels)[0], ops.shape(labels)[1], ops.shape(labels)[2]
    per_image_or_pixel = ops.reshape(weights, (batch, -1))  # (B, 1) or (B, H * W)
    return ops.reshape(ops.broadcast_to(per_image_or_pixel, (batch, height * width)),
                       (batch, height, width))


def _replica_share(value):
    """A batch-mean loss divided by the number of `tf.distribute` replicas in sync.

    Under `tf.distribute` each replica computes the loss on its part of the batch
    and the replicas' gradients are summed, so Keras divides every loss by the
    replica count (`scale_loss_for_distribution` in keras/src/losses/loss.py). It
    does so in `reduce_values`, for values `call` left unreduced only: a loss whose
    `call` returns the reduced scalar, as these do, must divide it itself, or its
    gradients (and the reported loss) are the replica count times too large. On
    JAX and torch Keras computes one loss over the global batch: nothing to divide.
    """
    replicas = replicas_in_sync()
    return value if replicas == 1 else value * (1.0 / replicas)


class _ScalarLoss(keras.losses.Loss):
    """A loss whose `call` returns the batch's mean itself: divided per replica (`_replica_share`)."""

    # CombinedLoss sums terms that each did the division.
    divides_by_replicas = True
    # Whether `__call__` refuses NumPy labels that are no class id nor the ignore label.
    checks_numpy_labels = True

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction != "sum_over_batch_size":  # Keras' reduction would be ignored
            raise ValueError(
                f"{type(self).__name__} reduces itself to one value for the batch (a mean "
                "over its valid pixels, or over classes for Dice and Lovász): `reduction` "
                f"can only be 'sum_over_batch_size', the default; received {reduction!r}."
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    @classmethod
    def from_config(cls, config):
        """A saved loss; a `reduction` other than the default, which files written before
        2026-12-08 may hold (it was ignored then), is dropped with a warning."""
        reduction = config.get("reduction", "sum_over_batch_size")
        if reduction != "sum_over_batch_size":
            warnings.warn(f"{cls.__name__} was saved with reduction={reduction!r}, which it "
                          "ignored: it loads with the default (a mean over the batch).",
                          stacklevel=2)
            config = {**config, "reduction": "sum_over_batch_size"}
        return super().from_config(config)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if self.checks_numpy_labels:
            _check_numpy_labels(y_true, y_pred, getattr(self, "ignore_index", IGNORE_INDEX))
        value = super().__call__(y_true, y_pred, sample_weight)
        return _replica_share(value) if self.divides_by_replicas else value


class _SampleWeightedLoss(_ScalarLoss):
    """A loss that applies Keras' `sample_weight` itself, in `call`.

    Keras' default would multiply the already reduced value by the weights'
    mean, which weights no image or pixel. The weights given to `__call__` are
    `self._sample_weight` while `call` runs (at trace time in a compiled step).
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        self._sample_weight = sample_weight
        try:
            return super().__call__(y_true, y_pred)
        finally:
            self._sample_weight = None


class _PixelMeanLoss(_SampleWeightedLoss):
    """A loss whose value is a weighted mean over the valid pixels.

    `sample_weight` (Keras' `fit(sample_weight=...)`, or a direct call) weights
    each pixel in that mean, per image `(B,)` or per pixel `(B, H, W)`:
    `sum(s w l) / sum(s w)`, with `w` the class weight of valid pixels.
    """

    def _sample_factors(self, labels):
        """The sample weights as `(B, H, W)` factors, or None without weights."""
        sample_weight = getattr(self, "_sample_weight", None)
        return None if sample_weight is None else _pixel_sample_weights(sample_weight, labels)

    @staticmethod
    def _pixel_weights(labels, valid, class_weights, factors):
        weights = _pixel_weights(labels, valid, class_weights)
        return weights if factors is None else weights * factors


class _RegionLoss(_ScalarLoss):
    """A loss over regions of the batch (Dice, Lovász), where a pixel's weight is undefined."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} takes no `sample_weight`: it compares regions of the "
                "batch, not pixels one by one. Use its `class_weights`, or a pixel loss "
                "(SegmentationCrossEntropy, OhemCrossEntropy, FocalLoss) for weighted pixels."
            )
        return super().__call__(y_true, y_pred)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class SegmentationCrossEntropy(_PixelMeanLoss):
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

    def __init__(self, ignore_index=IGNORE_INDEX, class_weights=None, name="segmentation_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = int(ignore_index)
        self.class_weights = _check_class_list(class_weights, "class_weights", type(self).__name__)

    def _prepared(self, y_true, y_pred):
        """`_prepare`'s labels, logits and valid pixels, the class weights checked against the logits."""
        labels, logits, valid = _prepare(y_true, y_pred, self.ignore_index)
        _check_num_classes(self.class_weights, logits, "class_weights", type(self).__name__)
        return labels, logits, valid

    def call(self, y_true, y_pred):
        labels, logits, valid = self._prepared(y_true, y_pred)
        ce = _pixel_cross_entropy(labels, logits)
        factors = self._sample_factors(labels)
        return _weighted_mean(ce, self._pixel_weights(labels, valid, self.class_weights, factors))

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

    def __init__(self, ignore_index=IGNORE_INDEX, threshold=0.7, min_kept=100000, class_weights=None, name="ohem_cross_entropy", **kwargs):
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, name=name, **kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"OhemCrossEntropy: `threshold` must be in (0, 1]; received {threshold!r}.")
        if int(min_kept) < 0:
            raise ValueError(f"OhemCrossEntropy: `min_kept` must be >= 0; received {min_kept!r}.")
        self.threshold = float(threshold)
        self.min_kept = int(min_kept)

    def call(self, y_true, y_pred):
        labels, logits, valid = self._prepared(y_true, y_pred)
        factors = self._sample_factors(labels)
        if factors is not None:  # weight 0: not a candidate
            valid = ops.logical_and(valid, factors > 0)
        ce = _pixel_cross_entropy(labels, logits)
        true_prob = ops.stop_gradient(ops.exp(-ce))
        # Invalid pixels sort last; the k-th smallest valid probability raises the threshold.
        flat = ops.reshape(ops.where(valid, true_prob, 2.0), (-1,))
        num_valid = ops.sum(ops.cast(valid, "int32"))
        k = ops.minimum(num_valid, self.min_kept)
        kth = ops.take(ops.sort(flat), ops.maximum(k - 1, 0))
        threshold = ops.where(k > 0, ops.maximum(kth, self.threshold), self.threshold)
        kept = ops.logical_and(valid, true_prob <= threshold)
        return _weighted_mean(ce, self._pixel_weights(labels, kept, self.class_weights, factors))

    def get_config(self):
        config = super().get_config()
        config.update({"threshold": self.threshold, "min_kept": self.min_kept})
        return config


def median_frequency_weights(masks, num_classes, power=0.5, ignore_index=IGNORE_INDEX):
    """Class weights `(median frequency / frequency) ** power` from label maps.

    Median-frequency balancing (Eigen & Fergus, ICCV 2015) with an exponent:
    `power=1` is the classic weighting, the default `0.5` its square root, which
    lifts rare classes (thin poles, people) without letting them dominate. The
    median is taken over the classes present; absent classes get weight 1.
    Pixels labelled `ignore_index` (or outside `[0, num_classes)`) are not counted.

    Args:
        masks: integer array of labels, any shape (e.g. `(N, H, W)`).
        num_classes: int, number of classes.
        power: float >= 0, the exponent.
        ignore_index: int, the label that is not counted.

    Returns:
        A list of `num_classes` floats, for `class_weights=` of the losses.

    Example:
    ```python
    weights = median_frequency_weights(train_masks, num_classes=8)
    loss = OhemCrossEntropy(class_weights=weights)
    ```
    """
    import numpy as np

    if int(num_classes) < 1:
        raise ValueError(f"`num_classes` must be a positive int; received {num_classes!r}.")
    if float(power) < 0:
        raise ValueError(f"`power` must be >= 0; received {power!r}.")
    labels = np.asarray(masks).ravel()
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`masks` must hold integer labels; received dtype {labels.dtype}.")
    labels = labels[(labels != ignore_index) & (labels >= 0) & (labels < num_classes)]
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype("float64")
    if counts.sum() == 0:
        raise ValueError("`masks` hold no pixel of any class (all ignored or out of range).")
    frequency = counts / counts.sum()
    present = frequency > 0
    weights = np.ones(num_classes)
    weights[present] = (np.median(frequency[present]) / frequency[present]) ** float(power)
    return [float(w) for w in weights]


def deep_supervision_loss(loss, y_true, logits, aux_logits, aux_weight=0.4, aux_loss=None):
    """`loss(y, logits) + aux_weight * aux_loss(y, aux_logits)` (paper Sec. 3.4), for
    custom training loops; `AlignSeg.compute_loss` is the same sum.

    The auxiliary head sits on the third fused feature. The authors' criteria
    give it plain cross-entropy whatever the main loss, weighted 0.1 (0.4 in
    their unused OHEM criterion): `aux_loss=SegmentationCrossEntropy()`, as
    `AlignSeg.compile(aux_loss=...)` does. `aux_loss=None` uses `loss`.

    Example:
    ```python
    total = deep_supervision_loss(OhemCrossEntropy(), labels, logits, aux_logits,
                                  aux_weight=0.1, aux_loss=SegmentationCrossEntropy())
    ```
    """
    total = loss(y_true, logits)
    if aux_logits is not None and aux_weight:
        total = total + aux_weight * (aux_loss or loss)(y_true, aux_logits)
    return total


# --- Helpers of the region losses (Dice, Lovász) and of the focal loss. ---


def _check_class_list(values, what, owner):
    """A list of floats >= 0 (None passes), or a ValueError naming the argument."""
    if values is None:
        return None
    try:
        values = [float(v) for v in values]
    except TypeError:
        raise ValueError(f"{owner}: `{what}` must be None or a list of per-class numbers; received {values!r}.") from None
    if not values or any(not v >= 0.0 for v in values):
        raise ValueError(f"{owner}: `{what}` must be a non-empty list of numbers >= 0; received {values!r}.")
    return values


def _check_num_classes(values, logits, what, owner):
    """A per-class list must have one entry per logit channel (when that is known)."""
    channels = logits.shape[-1]
    if values is not None and channels is not None and len(values) != channels:
        raise ValueError(
            f"{owner}: `{what}` has {len(values)} entries but the logits have {channels} classes."
        )


def _check_classes(classes, owner):
    """"all", "present" or a list of class ids, as `classes` of the Lovász reference code."""
    if isinstance(classes, str):
        if classes not in ("all", "present"):
            raise ValueError(f'{owner}: `classes` must be "all", "present" or a list of class ids; received {classes!r}.')
        return classes
    try:
        ids = [int(c) for c in classes]
    except TypeError:
        raise ValueError(f'{owner}: `classes` must be "all", "present" or a list of class ids; received {classes!r}.') from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise ValueError(f"{owner}: `classes` must list distinct class ids >= 0; received {classes!r}.")
    return ids


def _class_selection(classes, num_classes, present):
    """1.0 for the classes that enter the mean over classes, 0.0 for the others.

    `present` is a boolean `(..., C)`: the class has a valid pixel of that class.
    """
    if classes == "present":
        return ops.cast(present, "float32")
    if classes == "all":
        return ops.ones_like(present, dtype="float32")
    if max(classes) >= num_classes:
        raise ValueError(f"`classes` names class {max(classes)} but the logits have {num_classes} classes.")
    chosen = ops.convert_to_tensor([1.0 if c in classes else 0.0 for c in range(num_classes)], "float32")
    return ops.broadcast_to(chosen, ops.shape(present))


def _mean_over_classes(per_class, selection, class_weights):
    """`sum_c w_c s_c l_c / sum_c w_c s_c` over the last axis (0 where nothing is selected)."""
    weights = selection
    if class_weights is not None:
        weights = weights * ops.convert_to_tensor(class_weights, "float32")
    total = ops.sum(weights, axis=-1)
    return ops.sum(per_class * weights, axis=-1) / ops.maximum(total, 1e-12)


def _mean_over_labelled_images(per_image, valid):
    """The mean of `per_image` losses `(B,)` over the images with a valid pixel; 0 without one.

    An image of ignored pixels only (padding, an unlabelled frame) has no loss of
    its own: counted as 0 it scaled the other images' loss and gradient down.
    """
    labelled = ops.cast(ops.any(valid, axis=(1, 2)), "float32")
    return ops.sum(per_image * labelled) / ops.maximum(ops.sum(labelled), 1.0)


def _valid_one_hot(labels, valid, num_classes):
    """One-hot labels with all-zero rows at ignored pixels, float32 `(..., C)`."""
    one_hot = ops.one_hot(labels, num_classes, dtype="float32")
    return one_hot * ops.expand_dims(ops.cast(valid, "float32"), -1)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class DiceLoss(_RegionLoss):
    """Soft multi-class Dice loss on softmax probabilities.

    With `p` the softmax probabilities and `g` the one-hot labels, over the
    valid (not ignored) pixels only:

        dice_c = (2 * sum(p_c * g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)
        loss   = 1 - sum_c w_c * dice_c / sum_c w_c     (over the selected classes)

    Ignored pixels enter neither sum (nor their probabilities). With
    `per_image=False` (the default) the sums run over all pixels of the batch,
    one Dice per class; with `per_image=True` they run over each image, and the
    loss is the mean of the losses of the images with a valid pixel (an image of
    ignored pixels only has no loss of its own; 0 when no image has one).

    Which classes enter the mean (`classes`):
    - `"all"` (default): every class. A class absent from both the ground truth
      and the prediction has `sum(g_c) = 0` and `sum(p_c)` close to 0, so a Dice
      close to 1 (exactly 1 when both sums are 0): it adds about nothing to the
      loss but still counts in the mean, which scales the loss and its gradient
      down by the fraction of such classes. A class absent from the ground
      truth but predicted has Dice `smooth / (sum(p_c) + smooth)`, close to 0,
      so false positives of absent classes are penalised.
    - `"present"`: only the classes with at least one valid pixel in the
      ground truth (of the batch, or of the image with `per_image=True`);
      false positives of the other classes are then not penalised. With no
      valid pixel the loss is 0.
    - a list of class ids: those classes only.

    Args:
        ignore_index: int, label value that contributes nothing (255,
            `alignseg_keras.checks.IGNORE_INDEX`).
        class_weights: None or a list of per-class weights `w_c` of the mean
            over classes.
        smooth: float >= 0 added to numerator and denominator (1.0). A class
            with both sums 0 has Dice 1 whatever `smooth`.
        per_image: bool, sums per image instead of over the batch (False).
        classes: `"all"`, `"present"` or a list of class ids (see above).
        name: loss name.

    Example:
    ```python
    loss = DiceLoss()  # labels (B, H, W), logits (B, h, w, C)
    model.compile(loss=CombinedLoss([(SegmentationCrossEntropy(), 1.0), (DiceLoss(), 0.5)]))
    ```
    """

    def __init__(self, ignore_index=IGNORE_INDEX, class_weights=None, smooth=1.0, per_image=False,
                 classes="all", name="dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not float(smooth) >= 0.0:
            raise ValueError(f"DiceLoss: `smooth` must be >= 0; received {smooth!r}.")
        self.ignore_index = int(ignore_index)
        self.class_weights = _check_class_list(class_weights, "class_weights", "DiceLoss")
        self.smooth = float(smooth)
        self.per_image = bool(per_image)
        self.classes = _check_classes(classes, "DiceLoss")

    def call(self, y_true, y_pred):
        labels, logits, valid = _prepare(y_true, y_pred, self.ignore_index)
        num_classes = logits.shape[-1]
        _check_num_classes(self.class_weights, logits, "class_weights", "DiceLoss")
        probs = ops.softmax(logits, axis=-1) * ops.expand_dims(ops.cast(valid, "float32"), -1)
        truth = _valid_one_hot(labels, valid, num_classes)
        axes = (1, 2) if self.per_image else (0, 1, 2)
        intersection = ops.sum(probs * truth, axis=axes)
        truth_sum = ops.sum(truth, axis=axes)
        denominator = ops.sum(probs, axis=axes) + truth_sum + self.smooth
        numerator = 2.0 * intersection + self.smooth
        # Both sums 0 (and smooth 0): an empty class that is predicted empty, Dice 1.
        dice = ops.where(denominator > 0, numerator / ops.maximum(denominator, 1e-12), 1.0)
        selection = _class_selection(self.classes, num_classes, truth_sum > 0)
        losses = 1.0 - dice
        loss = _mean_over_classes(losses, selection, self.class_weights)
        return _mean_over_labelled_images(loss, valid) if self.per_image else loss

    def get_config(self):
        config = super().get_config()
        config.update({
            "ignore_index": self.ignore_index,
            "class_weights": self.class_weights,
            "smooth": self.smooth,
            "per_image": self.per_image,
            "classes": self.classes,
        })
        return config


@keras.saving.register_keras_serializable(package="alignseg_keras")
class FocalLoss(_PixelMeanLoss):
    """Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    Per valid pixel with true class `t` and softmax probability `p_t`:

        FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    averaged over the valid pixels: `sum(w_t * FL) / sum(w_t)` with `w_t` the
    class weight of the pixel's true class (1 without `class_weights`), the
    weighted mean of `SegmentationCrossEntropy`. `gamma` down-weights the
    pixels already classified well; `gamma=0` and `alpha=None` give
    `SegmentationCrossEntropy` exactly.

    `alpha` and `class_weights` differ in the normalisation: `alpha_t` scales
    each pixel's term only (the paper's alpha, normalised by the number of
    valid pixels), `class_weights` also enter the denominator (PyTorch's
    weighted mean). A float `alpha` multiplies every pixel (the paper's
    alpha / (1 - alpha) pair belongs to its binary sigmoid classifiers; for a
    per-class balance pass a list).

    Args:
        ignore_index: int, label value that contributes nothing (255,
            `alignseg_keras.checks.IGNORE_INDEX`).
        gamma: float >= 0, focusing parameter (2.0, the paper's choice).
        alpha: None, a float >= 0, or a list of per-class alphas.
        class_weights: None or a list of per-class weights (weighted mean).
        name: loss name.

    Example:
    ```python
    loss = FocalLoss(gamma=2.0, alpha=[0.25, 1.0, 1.0])
    model.compile(loss=loss)
    ```
    """

    def __init__(self, ignore_index=IGNORE_INDEX, gamma=2.0, alpha=None, class_weights=None,
                 name="focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not float(gamma) >= 0.0:
            raise ValueError(f"FocalLoss: `gamma` must be >= 0; received {gamma!r}.")
        if isinstance(alpha, numbers.Real):
            if not float(alpha) >= 0.0:
                raise ValueError(f"FocalLoss: `alpha` must be None, a float >= 0 or a per-class list; received {alpha!r}.")
            alpha = float(alpha)
        else:
            alpha = _check_class_list(alpha, "alpha", "FocalLoss")
        self.ignore_index = int(ignore_index)
        self.gamma = float(gamma)
        self.alpha = alpha
        self.class_weights = _check_class_list(class_weights, "class_weights", "FocalLoss")

    def call(self, y_true, y_pred):
        labels, logits, valid = _prepare(y_true, y_pred, self.ignore_index)
        _check_num_classes(self.class_weights, logits, "class_weights", "FocalLoss")
        if isinstance(self.alpha, list):
            _check_num_classes(self.alpha, logits, "alpha", "FocalLoss")
        ce = _pixel_cross_entropy(labels, logits)  # -log(p_t)
        # 1 - p_t = -expm1(log p_t), accurate near p_t = 1; the floor keeps the
        # gradient of (1 - p_t) ** gamma finite for gamma < 1 when p_t rounds to 1.
        focal = ops.power(ops.maximum(-ops.expm1(-ce), 1e-12), self.gamma) * ce
        if isinstance(self.alpha, list):
            focal = focal * ops.take(ops.convert_to_tensor(self.alpha, "float32"), labels)
        elif self.alpha is not None:
            focal = focal * self.alpha
        factors = self._sample_factors(labels)
        return _weighted_mean(focal, self._pixel_weights(labels, valid, self.class_weights, factors))

    def get_config(self):
        config = super().get_config()
        config.update({
            "ignore_index": self.ignore_index,
            "gamma": self.gamma,
            "alpha": self.alpha,
            "class_weights": self.class_weights,
        })
        return config


def _lovasz_gradient(fg_sorted):
    """`lovasz_grad` of the reference code along axis -2: the Jaccard-loss increments.

    `fg_sorted` is int32 `(..., N, C)`, 1 where the sorted pixel belongs to the
    class. Counts are integer cumulative sums (exact beyond 2**24 pixels).
    """
    gts = ops.sum(fg_sorted, axis=-2, keepdims=True)
    intersection = ops.cast(gts - ops.cumsum(fg_sorted, axis=-2), "float32")
    union = ops.cast(gts + ops.cumsum(1 - fg_sorted, axis=-2), "float32")  # >= position + 1
    jaccard = 1.0 - intersection / union
    previous = ops.concatenate([ops.zeros_like(jaccard[..., :1, :]), jaccard[..., :-1, :]], axis=-2)
    return jaccard - previous


@keras.saving.register_keras_serializable(package="alignseg_keras")
class LovaszSoftmaxLoss(_RegionLoss):
    """Lovász-Softmax loss (Berman et al., "The Lovász-Softmax loss", CVPR 2018).

    A convex surrogate of the Jaccard (IoU) loss: for each class `c` the errors
    `m_i = |[y_i = c] - p_i,c|` of the valid pixels are sorted in decreasing
    order and dotted with the increments of the Jaccard loss
    `|S| / |F_c ∪ S|` along that order (`S` the pixels so far, `F_c` the
    pixels of class `c`), the Lovász extension of the Jaccard loss. The loss is
    the mean over the selected classes; at one-hot probabilities it equals
    `1 - IoU_c` averaged over them. As the authors' `lovasz_softmax` (with
    `lovasz_softmax_flat` and `lovasz_grad`):

    - `classes="present"` (default): the classes with a valid pixel in the
      ground truth; `"all"`: every class (an absent class adds its largest
      predicted probability); or a list of class ids.
    - `per_image=False` (default): one loss over all pixels of the batch;
      `True`: the mean over images of each image's loss.
    - ignored pixels are dropped.

    Where the authors' code breaks, this loss makes its own choice: with no
    valid pixel it is 0 (theirs returns an empty tensor); under
    `per_image=True` an image with only ignored pixels is left out of the mean
    over images (theirs raises or returns an empty tensor); theirs raises an
    IndexError for exactly one valid pixel, where this loss is that pixel's
    `1 - p`.

    `class_weights` make the mean over classes weighted (an addition to the
    reference code). Sorting `(pixels, C)` errors costs `O(N C log N)` time
    and a few `N x C` buffers (N pixels of the batch, or of an image);
    shapes are static, so it runs under XLA and `jax.jit`.

    Args:
        ignore_index: int, label value that contributes nothing (255,
            `alignseg_keras.checks.IGNORE_INDEX`).
        classes: `"present"`, `"all"` or a list of class ids.
        per_image: bool, one loss per image, averaged (False).
        class_weights: None or a list of per-class weights of the class mean.
        name: loss name.

    Example:
    ```python
    loss = LovaszSoftmaxLoss(classes="present")
    model.compile(loss=loss)
    ```
    """

    def __init__(self, ignore_index=IGNORE_INDEX, classes="present", per_image=False, class_weights=None,
                 name="lovasz_softmax_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = int(ignore_index)
        self.classes = _check_classes(classes, "LovaszSoftmaxLoss")
        self.per_image = bool(per_image)
        self.class_weights = _check_class_list(class_weights, "class_weights", "LovaszSoftmaxLoss")

    def call(self, y_true, y_pred):
        labels, logits, valid = _prepare(y_true, y_pred, self.ignore_index)
        num_classes = logits.shape[-1]
        _check_num_classes(self.class_weights, logits, "class_weights", "LovaszSoftmaxLoss")
        probs = ops.softmax(logits, axis=-1)
        fg = ops.one_hot(labels, num_classes, dtype="int32") * ops.expand_dims(ops.cast(valid, "int32"), -1)
        errors = ops.abs(ops.cast(fg, "float32") - probs)
        # Ignored pixels get error -1: they sort after every valid pixel, and the
        # clip below makes their terms 0 (and gradient-free).
        errors = ops.where(ops.expand_dims(valid, -1), errors, -1.0)
        shape = (ops.shape(errors)[0], -1, num_classes) if self.per_image else (1, -1, num_classes)
        errors = ops.reshape(errors, shape)
        fg = ops.reshape(fg, shape)
        order = ops.argsort(-errors, axis=-2)
        errors_sorted = ops.take_along_axis(errors, order, axis=-2)
        fg_sorted = ops.take_along_axis(fg, order, axis=-2)
        gradient = ops.stop_gradient(_lovasz_gradient(fg_sorted))
        per_class = ops.sum(ops.maximum(errors_sorted, 0.0) * gradient, axis=-2)  # (images, C)
        selection = _class_selection(self.classes, num_classes, ops.sum(fg, axis=-2) > 0)
        loss = _mean_over_classes(per_class, selection, self.class_weights)  # (images,) or (1,)
        return _mean_over_labelled_images(loss, valid) if self.per_image else loss[0]

    def get_config(self):
        config = super().get_config()
        config.update({
            "ignore_index": self.ignore_index,
            "classes": self.classes,
            "per_image": self.per_image,
            "class_weights": self.class_weights,
        })
        return config


def _combined_term(term):
    """`(loss, weight)` of a `CombinedLoss` term: a loss, a `(loss, weight)` pair or
    their serialized form; a `TypeError` or `ValueError` naming the term otherwise."""
    pair = isinstance(term, (list, tuple))
    if pair and len(term) != 2:
        raise TypeError(
            f"CombinedLoss: a term is a loss or a (loss, weight) pair; received {len(term)} "
            f"items: {term!r}."
        )
    loss, weight = term if pair else (term, 1.0)
    if isinstance(loss, dict):
        loss = keras.saving.deserialize_keras_object(loss)
    if not isinstance(loss, keras.losses.Loss):
        raise TypeError(
            "CombinedLoss: each term must be a keras.losses.Loss (e.g. "
            "keras.losses.SparseCategoricalCrossentropy(ignore_class=255), not its name) or "
            f"a (loss, weight) pair; received {term!r}."
        )
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not (
            math.isfinite(weight) and weight >= 0):
        raise ValueError(
            f"CombinedLoss: the weight of {type(loss).__name__} must be a finite number of "
            f"at least 0; received {weight!r}."
        )
    return loss, float(weight)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class CombinedLoss(_SampleWeightedLoss):
    """A weighted sum of losses: `sum_i weight_i * loss_i(y_true, y_pred)`.

    Each term is a `keras.losses.Loss` (with its own reduction) or a
    `(loss, weight)` pair; a bare loss has weight 1. The terms are serialized
    with the combination, so a model compiled with it saves and loads.

    `ignore_index` is the terms' common ignore label (what `AlignSeg.fit` and
    `evaluate` accept in masks); terms with different ignore labels are
    refused. Terms without one (e.g. Keras' own losses) ignore nothing; with
    no term having one it is `IGNORE_INDEX` (255).

    Args:
        losses: a list of `keras.losses.Loss` or `(loss, weight)` pairs.
        name: loss name.

    Example:
    ```python
    loss = CombinedLoss([(SegmentationCrossEntropy(), 1.0), (DiceLoss(), 0.5)])
    model.compile(loss=loss)  # the same sum on the auxiliary head, times aux_loss_weight
    ```
    """

    # Each term's value is divided under tf.distribute once, in `call`: ours and
    # Keras' reduced ones divide themselves; unreduced values are averaged and divided
    # here. Keras divides no "sum" (per-replica sums add up to the global one).
    divides_by_replicas = False
    # Its terms check NumPy labels with their own ignore labels (a Keras term's
    # `ignore_class` is none of this loss's `ignore_index`).
    checks_numpy_labels = False

    def __init__(self, losses, name="combined_loss", **kwargs):
        if not isinstance(name, str):  # CombinedLoss([a, b], [1.0, 0.5]): weights as the name
            raise TypeError(
                f"CombinedLoss: `name` must be a string; received {name!r}. The weights go "
                "with their losses: CombinedLoss([(loss_a, 1.0), (loss_b, 0.5)])."
            )
        super().__init__(name=name, **kwargs)
        if isinstance(losses, (keras.losses.Loss, dict)) or not isinstance(losses, (list, tuple)):
            raise TypeError(
                "CombinedLoss: `losses` must be a list of losses or (loss, weight) pairs, e.g. "
                f"CombinedLoss([(loss_a, 1.0), (loss_b, 0.5)]); received {losses!r}."
            )
        terms = [_combined_term(term) for term in losses]
        if not terms:
            raise ValueError("CombinedLoss: `losses` must name at least one loss.")
        labels = {loss.ignore_index for loss, _ in terms if hasattr(loss, "ignore_index")}
        if len(labels) > 1:
            raise ValueError(
                f"CombinedLoss: the terms ignore different labels {sorted(labels)}; give them one `ignore_index`."
            )
        self.terms = terms
        self.ignore_index = labels.pop() if labels else IGNORE_INDEX

    def call(self, y_true, y_pred):
        sample_weight = getattr(self, "_sample_weight", None)  # passed on to each term
        total = 0.0
        for loss, weight in self.terms:
            if weight:
                value = loss(y_true, y_pred, sample_weight=sample_weight)
                if len(value.shape):  # a Keras term with reduction None: its batch mean
                    value = _replica_share(ops.mean(value))
                total = total + weight * value
        return ops.convert_to_tensor(total, "float32")

    def get_config(self):
        config = super().get_config()
        config["losses"] = [
            [keras.saving.serialize_keras_object(loss), weight] for loss, weight in self.terms
        ]
        return config


def combine(*terms, name="combined_loss"):
    """`CombinedLoss(terms)`: `combine((ce, 1.0), (DiceLoss(), 0.5))`."""
    return CombinedLoss(list(terms), name=name)


# The names of `loss_from_spec` (and `alignseg train --loss`).
LOSS_NAMES = {
    "ce": SegmentationCrossEntropy,
    "ohem": OhemCrossEntropy,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "lovasz": LovaszSoftmaxLoss,
}


def loss_from_spec(spec, options=None, ignore_index=IGNORE_INDEX, class_weights=None):
    """A loss from a short text: one name, or a sum of weighted names.

    `spec` is a comma-separated list of `name[:weight]` terms with names from
    `LOSS_NAMES` (`ce`, `ohem`, `dice`, `focal`, `lovasz`): `"ohem"`,
    `"ce:1,dice:0.5"`, `"ohem,lovasz:0.25"`. One term without a weight is that
    loss itself; several make a `CombinedLoss`.

    Args:
        spec: str, the terms.
        options: dict name -> dict of keyword arguments of that loss, e.g.
            `{"ohem": {"threshold": 0.7}, "focal": {"gamma": 2.0}}`.
        ignore_index: int, for every term.
        class_weights: list of floats or None, for every term that takes them.

    Example:
    ```python
    loss = loss_from_spec("ce:1,dice:0.5")  # CombinedLoss of cross-entropy and 0.5 x Dice
    model.compile(loss=loss)
    ```
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"The loss must be a text like 'ohem' or 'ce:1,dice:0.5'; received {spec!r}.")
    options = options or {}
    unknown_options = set(options) - set(LOSS_NAMES)
    if unknown_options:
        raise ValueError(f"Options for unknown losses {sorted(unknown_options)}; known: {sorted(LOSS_NAMES)}.")
    terms = []
    for term in spec.split(","):
        name, _, weight = term.strip().partition(":")
        if name not in LOSS_NAMES:
            raise ValueError(f"Unknown loss {name!r} in {spec!r}; choose from {', '.join(LOSS_NAMES)}.")
        if name in (t[0] for t in terms):
            raise ValueError(f"The loss {name!r} appears twice in {spec!r}.")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"The weight of {name!r} in {spec!r} is not a number: {weight!r}.") from None
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"The weight of {name!r} in {spec!r} must be a positive number; received {weight!r}.")
        terms.append((name, value, bool(weight)))
    losses = [
        (LOSS_NAMES[name](ignore_index=ignore_index, class_weights=class_weights, **options.get(name, {})), value)
        for name, value, _ in terms
    ]
    if len(losses) == 1 and not terms[0][2]:
        return losses[0][0]
    return CombinedLoss(losses)
