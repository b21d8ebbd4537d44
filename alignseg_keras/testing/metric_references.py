"""Slow NumPy references for the segmentation metrics: explicit loops over pixels and
classes of each metric's definition, independent of `alignseg_keras.metrics` (which
computes the same quantities with window max filters and a confusion matrix).
"""

import math

import numpy as np


def reference_confusion_counts(labels, predictions, num_classes, ignore_index=255, region=None):
    """Per class `(tp, fp, fn)` int arrays, counting pixels whose label is a class
    (not `ignore_index`) and where `region` (bool, same shape, or None) holds; a
    prediction that is no class (outside [0, num_classes)) is a false negative only."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp, fp, fn = (np.zeros(num_classes, np.int64) for _ in range(3))
    for index in np.ndindex(labels.shape):
        label, prediction = int(labels[index]), int(predictions[index])
        if label == ignore_index or not 0 <= label < num_classes:
            continue
        if region is not None and not region[index]:
            continue
        if label == prediction:
            tp[label] += 1
        else:
            fn[label] += 1
            if 0 <= prediction < num_classes:
                fp[prediction] += 1
    return tp, fp, fn


def reference_iou(labels, predictions, num_classes, ignore_index=255, region=None):
    """Per-class tp / (tp + fp + fn); NaN for a class that never occurs."""
    tp, fp, fn = reference_confusion_counts(labels, predictions, num_classes, ignore_index, region)
    return np.array(
        [np.nan if tp[c] + fp[c] + fn[c] == 0 else tp[c] / (tp[c] + fp[c] + fn[c])
         for c in range(num_classes)]
    )


def reference_dice(labels, predictions, num_classes, ignore_index=255):
    """Per-class 2 tp / (2 tp + fp + fn); NaN for a class that never occurs."""
    tp, fp, fn = reference_confusion_counts(labels, predictions, num_classes, ignore_index)
    return np.array(
        [np.nan if 2 * tp[c] + fp[c] + fn[c] == 0 else 2 * tp[c] / (2 * tp[c] + fp[c] + fn[c])
         for c in range(num_classes)]
    )


def reference_dilation(height, width, dilation_ratio):
    """The authors' `mask_to_boundary` band width: int(round(ratio * diagonal)), at least 1."""
    dilation = int(round(dilation_ratio * math.sqrt(height**2 + width**2)))
    return max(dilation, 1)


def reference_erode_3x3(mask):
    """One `cv2.erode` with a 3x3 kernel: the min over each pixel's 3x3 neighbours
    inside the array (cv2's default border leaves the outside out)."""
    height, width = mask.shape
    eroded = np.zeros_like(mask)
    for i in range(height):
        for j in range(width):
            eroded[i, j] = mask[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].min()
    return eroded


def reference_boundary_band(mask, dilation):
    """The authors' `mask_to_boundary`: a 1-pixel zero border, `dilation` 3x3 erosions,
    the border cropped off, mask minus erosion. `mask`: 2-D bool; returns 2-D bool."""
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    for _ in range(dilation):
        if not padded.any():  # nothing left to erode
            break
        padded = reference_erode_3x3(padded)
    eroded = padded[1:-1, 1:-1]
    return (mask.astype(np.uint8) - eroded).astype(bool)


def reference_boundary_iou(
    labels, predictions, num_classes, ignore_index=255, dilation_ratio=0.02, dilation=None
):
    """Per-class Boundary IoU over a batch `(B, H, W)` of label and predicted class ids.

    Per image and class, the bands of `labels == c` and `predictions == c`, both
    masks taken at the labelled pixels only (ignored pixels are in no class's
    mask on either side); their intersections and unions at the pixels not
    labelled `ignore_index` summed over
    the images; NaN for a class whose summed union is 0. Also returns the summed
    `(intersection, truth band, predicted band)` counts.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    intersection, truth, predicted = (np.zeros(num_classes, np.int64) for _ in range(3))
    for image_labels, image_predictions in zip(labels, predictions):
        height, width = image_labels.shape
        d = dilation if dilation is not None else reference_dilation(height, width, dilation_ratio)
        counted = (image_labels != ignore_index) & (image_labels >= 0) & (image_labels < num_classes)
        for c in range(num_classes):
            truth_band = reference_boundary_band(image_labels == c, d) & counted
            predicted_mask = (image_predictions == c) & counted
            predicted_band = reference_boundary_band(predicted_mask, d) & counted
            intersection[c] += np.sum(truth_band & predicted_band)
            truth[c] += np.sum(truth_band)
            predicted[c] += np.sum(predicted_band)
    union = truth + predicted - intersection
    ious = np.array([np.nan if union[c] == 0 else intersection[c] / union[c]
                     for c in range(num_classes)])
    return ious, (intersection, truth, predicted)


def reference_trimap(labels, width, num_classes, ignore_index=255):
    """The trimap of one label map `(H, W)`: bool, the pixels within `width - 1`
    (chessboard distance) of a boundary pixel, a pixel whose 3x3 neighbours inside
    the image hold another label (ignored and out-of-range labels being one label
    of their own; the image border is no boundary)."""
    labels = np.asarray(labels)
    height, image_width = labels.shape
    ids = np.where((labels != ignore_index) & (labels >= 0) & (labels < num_classes),
                   labels, num_classes)
    boundary = []
    for i in range(height):
        for j in range(image_width):
            neighbours = ids[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            if np.any(neighbours != ids[i, j]):
                boundary.append((i, j))
    trimap = np.zeros(labels.shape, bool)
    for i in range(height):
        for j in range(image_width):
            trimap[i, j] = any(max(abs(i - bi), abs(j - bj)) <= width - 1 for bi, bj in boundary)
    return trimap


def reference_trimap_iou(labels, predictions, num_classes, ignore_index=255, width=5):
    """Per-class IoU over the trimap pixels of a batch `(B, H, W)`; NaN for absent classes."""
    labels = np.asarray(labels)
    region = np.stack([reference_trimap(image, width, num_classes, ignore_index)
                       for image in labels])
    return reference_iou(labels, predictions, num_classes, ignore_index, region)
