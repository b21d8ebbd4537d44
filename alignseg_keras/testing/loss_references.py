"""Slow NumPy references of the segmentation losses, written from their definitions.

Independent of `alignseg_keras.losses` (float64, explicit loops, no Keras):
`losses_test.py` compares the vectorised `keras.ops` losses with them. All take
integer labels `(B, H, W)` and logits `(B, H, W, C)` of the same size.
"""

import math

import numpy as np

from alignseg_keras.checks import IGNORE_INDEX


def softmax(logits):
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _class_list(classes, num_classes, present):
    if classes == "all":
        return list(range(num_classes))
    if classes == "present":
        return [c for c in range(num_classes) if present[c]]
    return list(classes)


def _weighted_class_mean(values, class_weights):
    """`sum_c w_c v_c / sum_c w_c` over a dict {class: value}; 0 when empty."""
    if not values:
        return 0.0
    weights = {c: 1.0 if class_weights is None else float(class_weights[c]) for c in values}
    total = sum(weights.values())
    return sum(weights[c] * values[c] for c in values) / total if total > 0 else 0.0


def _sample_weight(sample_weights, index):
    """The weight of the pixel `index` (batch, row, column): per image, per pixel, or 1."""
    if sample_weights is None:
        return 1.0
    sample_weights = np.asarray(sample_weights, np.float64)
    return float(sample_weights[index[0]] if sample_weights.ndim == 1 else sample_weights[index])


def reference_cross_entropy(labels, logits, ignore_index=IGNORE_INDEX, class_weights=None,
                            sample_weights=None):
    """Weighted mean over valid pixels of -log softmax(logits)[label] (PyTorch's convention);
    `sample_weights` per image `(B,)` or per pixel `(B, H, W)` multiply the pixels' weights."""
    probs = softmax(logits)
    numerator = denominator = 0.0
    for index in np.ndindex(*labels.shape):
        label = int(labels[index])
        if label == ignore_index:
            continue
        weight = 1.0 if class_weights is None else float(class_weights[label])
        weight *= _sample_weight(sample_weights, index)
        numerator += weight * -math.log(probs[index][label])
        denominator += weight
    return numerator / denominator if denominator > 0 else 0.0


def reference_focal(labels, logits, gamma=2.0, alpha=None, ignore_index=IGNORE_INDEX, class_weights=None,
                    sample_weights=None):
    """Mean over valid pixels of -alpha_t (1 - p_t)^gamma log p_t (Lin et al. 2017, Eq. 5).

    With class weights, `sum(w_t FL) / sum(w_t)`.
    """
    probs = softmax(logits)
    numerator = denominator = 0.0
    for index in np.ndindex(*labels.shape):
        label = int(labels[index])
        if label == ignore_index:
            continue
        p_t = probs[index][label]
        if alpha is None:
            a_t = 1.0
        elif np.ndim(alpha) == 0:
            a_t = float(alpha)
        else:
            a_t = float(alpha[label])
        weight = 1.0 if class_weights is None else float(class_weights[label])
        weight *= _sample_weight(sample_weights, index)
        numerator += weight * -a_t * (1.0 - p_t) ** gamma * math.log(p_t)
        denominator += weight
    return numerator / denominator if denominator > 0 else 0.0


def _dice_of_pixels(pixels, num_classes, smooth, classes, class_weights):
    """1 - weighted mean Dice over the classes, from a list of (label, probabilities)."""
    sums = {c: [0.0, 0.0, 0.0] for c in range(num_classes)}  # sum p*g, sum p, sum g
    for label, p in pixels:
        for c in range(num_classes):
            g = 1.0 if label == c else 0.0
            sums[c][0] += p[c] * g
            sums[c][1] += p[c]
            sums[c][2] += g
    present = [sums[c][2] > 0 for c in range(num_classes)]
    losses = {}
    for c in _class_list(classes, num_classes, present):
        intersection, sum_p, sum_g = sums[c]
        denominator = sum_p + sum_g + smooth
        dice = (2 * intersection + smooth) / denominator if denominator > 0 else 1.0
        losses[c] = 1.0 - dice
    return _weighted_class_mean(losses, class_weights)


def reference_dice(labels, logits, smooth=1.0, per_image=False, classes="all",
                   ignore_index=IGNORE_INDEX, class_weights=None):
    """Soft Dice loss: 1 - mean over classes of (2 sum p g + s) / (sum p + sum g + s)."""
    probs = softmax(logits)
    num_classes = probs.shape[-1]
    images = []
    for b in range(labels.shape[0]):
        pixels = []
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                if int(labels[b, i, j]) != ignore_index:
                    pixels.append((int(labels[b, i, j]), probs[b, i, j]))
        images.append(pixels)
    if per_image:  # the images with a valid pixel (0 without one)
        return _mean_of_labelled([
            _dice_of_pixels(pixels, num_classes, smooth, classes, class_weights) for pixels in images if pixels
        ])
    pixels = [pixel for image in images for pixel in image]
    return _dice_of_pixels(pixels, num_classes, smooth, classes, class_weights)


def _mean_of_labelled(losses):
    """The mean of the losses of the images with a valid pixel; 0 for none."""
    return float(np.mean(losses)) if losses else 0.0


def jaccard_loss_of_set(mistakes, foreground):
    """Delta_J(M) = |M| / |F ∪ M| (Berman et al. 2018, Eq. 3); 0 for the empty set."""
    if not mistakes:
        return 0.0
    return len(mistakes) / len(foreground | mistakes)


def lovasz_extension(errors, foreground):
    """The Lovász extension of Delta_J at the error vector `errors` (Eq. 8-9).

    Sorts the pixels by decreasing error and sums each error times the increase
    of Delta_J when its pixel joins the set of the pixels before it, with
    Delta_J evaluated on explicit sets.
    """
    order = sorted(range(len(errors)), key=lambda k: -errors[k])
    total, chosen, previous = 0.0, set(), 0.0
    for k in order:
        chosen.add(k)
        current = jaccard_loss_of_set(chosen, foreground)
        total += errors[k] * (current - previous)
        previous = current
    return total


def _lovasz_of_pixels(pixels, num_classes, classes, class_weights):
    if not pixels:
        return 0.0  # only ignored pixels: the reference code returns 0
    present = [any(label == c for label, _ in pixels) for c in range(num_classes)]
    losses = {}
    for c in _class_list(classes, num_classes, present):
        foreground = {k for k, (label, _) in enumerate(pixels) if label == c}
        errors = [abs((1.0 if label == c else 0.0) - p[c]) for label, p in pixels]
        losses[c] = lovasz_extension(errors, foreground)
    return _weighted_class_mean(losses, class_weights)


def reference_lovasz_softmax(labels, logits, classes="present", per_image=False,
                             ignore_index=IGNORE_INDEX, class_weights=None):
    """Lovász-Softmax loss: the mean over classes of the Lovász extension of the
    Jaccard loss at the errors |[y = c] - p_c| of the valid pixels."""
    probs = softmax(logits)
    num_classes = probs.shape[-1]
    images = []
    for b in range(labels.shape[0]):
        pixels = []
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                if int(labels[b, i, j]) != ignore_index:
                    pixels.append((int(labels[b, i, j]), probs[b, i, j]))
        images.append(pixels)
    if per_image:  # the images with a valid pixel (0 without one)
        return _mean_of_labelled([_lovasz_of_pixels(p, num_classes, classes, class_weights) for p in images if p])
    return _lovasz_of_pixels([p for image in images for p in image], num_classes, classes, class_weights)


def mean_jaccard_loss(labels, predictions, num_classes, classes="present", ignore_index=IGNORE_INDEX):
    """1 - IoU of hard predictions, averaged over the classes (what Lovász equals at one-hot)."""
    valid = labels != ignore_index
    losses = {}
    present = [bool(np.any(labels[valid] == c)) for c in range(num_classes)]
    for c in _class_list(classes, num_classes, present):
        truth, predicted = (labels == c) & valid, (predictions == c) & valid
        union = np.sum(truth | predicted)
        losses[c] = 1.0 - np.sum(truth & predicted) / union if union else 0.0
    return _weighted_class_mean(losses, None)
