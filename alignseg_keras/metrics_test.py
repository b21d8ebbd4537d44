"""The metrics against slow NumPy references (`alignseg_keras.testing.metric_references`)
and cases worked out by hand, eagerly, compiled in a TensorFlow model, and on JAX."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from alignseg_keras.metrics import BoundaryIoU
from alignseg_keras.metrics import MeanDice
from alignseg_keras.metrics import MeanIoU
from alignseg_keras.metrics import TrimapIoU
from alignseg_keras.metrics import boundary_dilation
from alignseg_keras.metrics import dice_from_confusion
from alignseg_keras.metrics import iou_from_confusion
from alignseg_keras.testing.metric_references import reference_boundary_iou
from alignseg_keras.testing.metric_references import reference_confusion_counts
from alignseg_keras.testing.metric_references import reference_dice
from alignseg_keras.testing.metric_references import reference_dilation
from alignseg_keras.testing.metric_references import reference_iou
from alignseg_keras.testing.metric_references import reference_trimap
from alignseg_keras.testing.metric_references import reference_trimap_iou


def official_cityscapes_iou(labels, predictions, num_classes, ignore=255):
    """The official evaluation's per-class IoU: tp / (tp + fp + fn); NaN if a class never occurs."""
    return reference_iou(labels, predictions, num_classes, ignore)


def test_matches_the_official_class_average_over_batches():
    rng = np.random.default_rng(0)
    metric = MeanIoU(num_classes=5)
    all_labels, all_preds = [], []
    for _ in range(3):
        labels = rng.integers(0, 4, size=(2, 9, 7))  # class 4 never occurs in labels
        labels[rng.random(labels.shape) < 0.1] = 255
        logits = rng.normal(size=(2, 9, 7, 5)).astype("float32")
        logits[..., 4] -= 3.0  # rarely predicted
        metric.update_state(labels, logits)
        all_labels.append(labels)
        all_preds.append(logits.argmax(-1))
    expected = official_cityscapes_iou(np.stack(all_labels), np.stack(all_preds), 5)
    np.testing.assert_allclose(metric.per_class_iou(), expected, equal_nan=True)
    np.testing.assert_allclose(float(metric.result()), np.nanmean(expected), rtol=1e-6)


def test_accepts_class_ids_and_a_channel_axis_on_labels():
    labels = np.array([[[0, 1], [1, 255]]])
    metric = MeanIoU(num_classes=2)
    metric.update_state(labels[..., None], np.array([[[0, 1], [0, 1]]]))
    # class 0: tp 1, fp 1 -> 1/2; class 1: tp 1, fn 1 -> 1/2.
    np.testing.assert_allclose(metric.per_class_iou(), [0.5, 0.5])
    np.testing.assert_allclose(metric.pixel_accuracy(), 2 / 3)
    assert metric.confusion_matrix().tolist() == [[1, 0], [1, 1]]


def test_absent_classes_are_left_out_and_reset_works():
    metric = MeanIoU(num_classes=3)
    metric.update_state(np.zeros((1, 2, 2), "int32"), np.zeros((1, 2, 2), "int32"))
    assert float(metric.result()) == 1.0
    assert np.isnan(metric.per_class_iou()[1:]).all()
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0


def test_counts_stay_exact_past_the_carry():
    metric = MeanIoU(num_classes=2)
    labels = np.zeros((1, 1024, 1100), "int32")  # 1,126,400 pixels > 2**20 per update
    for _ in range(3):
        metric.update_state(labels, labels)
    assert metric.confusion_matrix()[0, 0] == 3 * 1024 * 1100


def test_config_round_trip():
    metric = MeanIoU(num_classes=19, ignore_index=0, name="miou")
    clone = MeanIoU.from_config(metric.get_config())
    assert (clone.num_classes, clone.ignore_index, clone.name) == (19, 0, "miou")


# --- Boundary IoU, trimap IoU and Dice ----------------------------------------------


def blocky_labels(rng, batch, height, width, num_classes, block=4, ignore_fraction=0.05):
    """Label maps of `block`-pixel squares (so that bands are thinner than regions),
    with some pixels ignored."""
    low = rng.integers(0, num_classes, (batch, -(-height // block), -(-width // block)))
    labels = np.repeat(np.repeat(low, block, 1), block, 2)[:, :height, :width]
    labels[rng.random(labels.shape) < ignore_fraction] = 255
    return labels


def noisy_predictions(rng, labels, num_classes, fraction=0.2):
    predictions = np.where(labels == 255, 0, labels)
    noise = rng.random(labels.shape) < fraction
    predictions[noise] = rng.integers(0, num_classes, noise.sum())
    return predictions


def shifted_square_case():
    """A 6x6 square of class 1 at rows/cols 2..7 of a 10x10 image of class 0; the
    prediction is the square one column to the right."""
    labels = np.zeros((1, 10, 10), "int32")
    labels[0, 2:8, 2:8] = 1
    predictions = np.zeros((1, 10, 10), "int32")
    predictions[0, 2:8, 3:9] = 1
    return labels, predictions


def test_boundary_iou_of_a_shifted_square():
    labels, predictions = shifted_square_case()
    metric = BoundaryIoU(num_classes=2, dilation=1)
    metric.update_state(labels, predictions)
    intersection, truth, predicted = metric.band_counts()
    # Class 1: a 6x6 square's 1-pixel band is its ring, 36 - 16 = 20 pixels, in both maps.
    # The rings share rows 2 and 7 at columns 3..7: 10 pixels; IoU 10 / (20 + 20 - 10).
    # Class 0: the image border (36 pixels) is a boundary, plus the ring around the
    # square (8x8 - 6x6 = 28). Predicted: border 36 + ring around the shifted square
    # (28, of which column 9, 8 pixels, is border) = 56. Shared: the border and rows
    # 1 and 8 at columns 2..8 (14) = 50; IoU 50 / (64 + 56 - 50) = 5/7.
    assert truth.tolist() == [64, 20]
    assert predicted.tolist() == [56, 20]
    assert intersection.tolist() == [50, 10]
    np.testing.assert_allclose(metric.per_class_iou(), [5 / 7, 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(float(metric.result()), (5 / 7 + 1 / 3) / 2, rtol=1e-6)


def test_boundary_band_grows_with_the_dilation():
    labels, _ = shifted_square_case()
    metric = BoundaryIoU(num_classes=2, dilation=2)
    metric.update_state(labels, labels)
    # Two erosions of the 6x6 square leave its 2x2 centre: band 32. Background: all
    # pixels within 2 of the border or of the square: 100 - 36 - 0 = 64 (the 10x10
    # image's background pixels are all within 2 of one or the other).
    assert metric.band_counts()[1].tolist() == [64, 32]
    assert float(metric.result()) == 1.0


def test_a_one_pixel_line_is_all_band_whatever_the_dilation():
    labels = np.zeros((1, 9, 11), "int32")
    labels[0, 4, 2:9] = 1  # 7 pixels
    thick = labels.copy()
    thick[0, 5, 2:9] = 1  # a 2-pixel-thick prediction: also all band
    for dilation in (1, 3):
        metric = BoundaryIoU(num_classes=2, dilation=dilation)
        metric.update_state(labels, thick)
        intersection, truth, predicted = metric.band_counts()
        assert (intersection[1], truth[1], predicted[1]) == (7, 7, 14)
        np.testing.assert_allclose(metric.per_class_iou()[1], 0.5)
        metric.reset_state()
        metric.update_state(labels, labels)
        np.testing.assert_allclose(metric.per_class_iou(), [1.0, 1.0])


def test_the_image_border_is_a_boundary():
    labels = np.zeros((1, 5, 7), "int32")
    predictions = labels.copy()
    predictions[0, 2, 3] = 1
    metric = BoundaryIoU(num_classes=2, dilation=1)
    metric.update_state(labels, predictions)
    intersection, truth, predicted = metric.band_counts()
    # Truth: class 0's band is the border ring, 35 - 3*5 = 20 pixels. Predicted: the
    # ring and the 8 neighbours of the class-1 pixel, which is its own band.
    assert truth.tolist() == [20, 0]
    assert predicted.tolist() == [28, 1]
    assert intersection.tolist() == [20, 0]
    np.testing.assert_allclose(metric.per_class_iou(), [20 / 28, 0.0])
    np.testing.assert_allclose(float(metric.result()), 10 / 28, rtol=1e-6)


def test_ignored_pixels_make_a_boundary_and_are_not_counted():
    labels = np.zeros((1, 5, 7), "int32")
    labels[0, 2, 3] = 255
    predictions = np.zeros((1, 5, 7), "int32")
    predictions[0, 2, 3] = 1  # class 1 only where the label is ignored
    metric = BoundaryIoU(num_classes=2, dilation=1)
    metric.update_state(labels[..., None], predictions)
    intersection, truth, predicted = metric.band_counts()
    # The ignored pixel is not class 0: its 8 neighbours join the border ring (20) in
    # class 0's truth band, as they do in the predicted band (class 1 predicted there is
    # background as every ignored pixel is). Class 1 has no band: NaN, left out of the mean.
    assert truth.tolist() == [28, 0] and predicted.tolist() == [28, 0]
    assert intersection.tolist() == [28, 0]
    np.testing.assert_allclose(metric.per_class_iou(), [1.0, np.nan])
    assert float(metric.result()) == 1.0


def test_what_is_predicted_at_ignored_pixels_does_not_count():
    # An ignored strip beside a labelled region, as Cityscapes' ego vehicle: a prediction
    # right at every labelled pixel scores 1 whatever it predicts in the strip. Taking
    # the predicted bands on the whole map scored 0.80 when the strip continued class 0.
    labels = np.zeros((1, 16, 24), "int32")
    labels[0, :, :5] = 1
    labels[0, :, 12:] = 255
    for fill in (0, 1, 2):
        predictions = np.where(labels == 255, fill, labels)
        metric = BoundaryIoU(num_classes=3, dilation=2)
        metric.update_state(labels, predictions)
        np.testing.assert_allclose(metric.per_class_iou(), [1.0, 1.0, np.nan])
        assert float(metric.result()) == 1.0
        # Class 0 (columns 5-11): columns 5-6 beside class 1 and 10-11 beside the strip
        # (4 x 16) and the top and bottom 2 rows of columns 7-9 (12): 76. Class 1
        # (columns 0-4): columns 0-1 at the border and 3-4 (4 x 16), 4 pixels of column 2.
        assert metric.band_counts()[1].tolist() == [76, 68, 0]


def test_a_class_missing_from_one_side_scores_zero_and_an_absent_one_nan():
    labels, _ = shifted_square_case()
    metric = BoundaryIoU(num_classes=3, dilation=1)
    metric.update_state(labels, np.zeros_like(labels))  # the square is missed
    # Class 0: truth band 64, predicted band the border 36, all shared: 36/64.
    # Class 1: truth band 20, none predicted: 0. Class 2 occurs nowhere: NaN.
    np.testing.assert_allclose(metric.per_class_iou(), [36 / 64, 0.0, np.nan])
    np.testing.assert_allclose(float(metric.result()), 36 / 128, rtol=1e-6)


def test_dilation_from_the_ratio_rounds_like_the_authors():
    assert boundary_dilation(1024, 2048) == 46  # 0.02 * 2289.7 = 45.8
    assert boundary_dilation(30, 40, 0.05) == 2  # 2.5: Python rounds halves to even
    assert boundary_dilation(30, 40, 0.07) == 4  # 3.5
    assert boundary_dilation(30, 40, 0.001) == 1  # at least one pixel
    for ratio in (0.001, 0.05, 0.07):
        assert boundary_dilation(30, 40, ratio) == reference_dilation(30, 40, ratio)
    rng = np.random.default_rng(3)
    labels = blocky_labels(rng, 2, 30, 40, 3, block=6)
    predictions = noisy_predictions(rng, labels, 3)
    by_ratio, by_pixels = BoundaryIoU(3, dilation_ratio=0.05), BoundaryIoU(3, dilation=2)
    by_ratio.update_state(labels, predictions)
    by_pixels.update_state(labels, predictions)
    assert all((a == b).all() for a, b in zip(by_ratio.band_counts(), by_pixels.band_counts()))
    other = BoundaryIoU(3, dilation=3)
    other.update_state(labels, predictions)
    assert not all((a == b).all() for a, b in zip(other.band_counts(), by_pixels.band_counts()))


@pytest.mark.parametrize("height, width", [(7, 9), (16, 16), (13, 31)])
@pytest.mark.parametrize("dilation, ratio", [(1, 0.02), (2, 0.02), (3, 0.02), (None, 0.1),
                                             (None, 0.3), (1000, 0.02)])
def test_boundary_iou_matches_the_reference(height, width, dilation, ratio):
    rng = np.random.default_rng(height * 100 + width)
    labels = blocky_labels(rng, 2, height, width, 4)
    predictions = noisy_predictions(rng, labels, 4)
    predictions[0, :, :2] = 7  # out-of-range predictions are in no class's band
    metric = BoundaryIoU(4, dilation=dilation, dilation_ratio=ratio)
    metric.update_state(labels, predictions)
    expected, counts = reference_boundary_iou(labels, predictions, 4, dilation=dilation,
                                              dilation_ratio=ratio)
    for got, want in zip(metric.band_counts(), counts):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(metric.per_class_iou(), expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(float(metric.result()), np.nanmean(expected), rtol=1e-6)


def test_boundary_iou_accepts_logits_and_a_dict():
    rng = np.random.default_rng(4)
    labels = blocky_labels(rng, 2, 12, 15, 3)
    logits = rng.normal(size=(2, 12, 15, 3)).astype("float32")
    from_logits, from_ids = BoundaryIoU(3, dilation=2), BoundaryIoU(3, dilation=2)
    from_logits.update_state(labels, {"logits": logits})
    from_ids.update_state(labels, logits.argmax(-1))
    np.testing.assert_array_equal(from_logits.band_counts(), from_ids.band_counts())


def test_boundary_iou_streams_over_batches_and_resets():
    rng = np.random.default_rng(5)
    labels = blocky_labels(rng, 6, 14, 18, 4)
    predictions = noisy_predictions(rng, labels, 4)
    streamed, whole = BoundaryIoU(4, dilation=2), BoundaryIoU(4, dilation=2)
    for start in range(0, 6, 2):
        streamed.update_state(labels[start : start + 2], predictions[start : start + 2])
    whole.update_state(labels, predictions)
    np.testing.assert_array_equal(streamed.band_counts(), whole.band_counts())
    assert float(streamed.result()) == float(whole.result())
    # Images of other sizes in one stream: each gets its own ratio-derived band.
    mixed = BoundaryIoU(4, dilation_ratio=0.15)
    other = blocky_labels(rng, 1, 25, 20, 4)
    mixed.update_state(labels, predictions)
    mixed.update_state(other, other)
    first, _ = reference_boundary_iou(labels, predictions, 4, dilation_ratio=0.15)
    _, first_counts = reference_boundary_iou(labels, predictions, 4, dilation_ratio=0.15)
    _, second_counts = reference_boundary_iou(other, other, 4, dilation_ratio=0.15)
    for got, a, b in zip(mixed.band_counts(), first_counts, second_counts):
        np.testing.assert_array_equal(got, a + b)
    streamed.reset_state()
    assert all(counts.sum() == 0 for counts in streamed.band_counts())
    assert float(streamed.result()) == 0.0


def test_boundary_counts_stay_exact_past_the_carry():
    metric = BoundaryIoU(num_classes=2, dilation=1)
    labels = np.zeros((1, 1024, 1100), "int32")
    labels[:, :, ::2] = 1  # one-pixel stripes: every pixel is band
    for _ in range(3):
        metric.update_state(labels, labels)
    assert metric.band_counts()[0].sum() == 3 * 1024 * 1100


def test_trimap_of_a_straight_edge():
    labels = np.zeros((1, 6, 8), "int32")
    labels[0, :, 4:] = 1
    for width, columns in ((1, [3, 4]), (2, [2, 3, 4, 5])):
        metric = TrimapIoU(num_classes=2, width=width)
        metric.update_state(labels, np.zeros_like(labels))  # everything predicted 0
        # The band is `width` columns on each side of the edge, 6 rows each.
        per_side = 6 * width
        assert metric.confusion_matrix().tolist() == [[per_side, 0], [per_side, 0]]
        np.testing.assert_allclose(metric.per_class_iou(), [0.5, 0.0])
        region = reference_trimap(labels[0], width, 2)
        assert np.flatnonzero(region.any(0)).tolist() == columns


def test_trimap_ignores_the_image_border_and_counts_ignore_as_a_label():
    uniform = np.zeros((1, 5, 5), "int32")
    metric = TrimapIoU(num_classes=2, width=3)
    metric.update_state(uniform, uniform)
    assert metric.confusion_matrix().sum() == 0  # no boundary: the border is none
    labels = uniform.copy()
    labels[0, 2, 2] = 255
    for width, counted in ((1, 8), (2, 24)):
        metric = TrimapIoU(num_classes=2, width=width)
        metric.update_state(labels, uniform)
        # The ignored centre's neighbours are boundary pixels; it is not counted.
        assert metric.confusion_matrix().tolist() == [[counted, 0], [0, 0]]
        assert float(metric.result()) == 1.0


@pytest.mark.parametrize("height, width", [(7, 9), (16, 16), (13, 31)])
@pytest.mark.parametrize("band", [1, 2, 4, 40])
def test_trimap_iou_matches_the_reference(height, width, band):
    rng = np.random.default_rng(height + width + band)
    labels = blocky_labels(rng, 2, height, width, 4)
    predictions = noisy_predictions(rng, labels, 4)
    metric = TrimapIoU(4, width=band)
    metric.update_state(labels, predictions)
    expected = reference_trimap_iou(labels, predictions, 4, width=band)
    np.testing.assert_allclose(metric.per_class_iou(), expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(float(metric.result()), np.nanmean(expected), rtol=1e-6)
    region = np.stack([reference_trimap(image, band, 4) for image in labels])
    tp, fp, fn = reference_confusion_counts(labels, predictions, 4, region=region)
    assert metric.confusion_matrix().sum() == np.sum(tp) + np.sum(fn)


def test_dice_from_confusion_and_streaming_mean_dice():
    np.testing.assert_allclose(dice_from_confusion([[3, 1], [0, 2]]), [6 / 7, 4 / 5])
    np.testing.assert_allclose(dice_from_confusion([[3, 0], [0, 0]]), [1.0, np.nan])
    rng = np.random.default_rng(6)
    metric = MeanDice(num_classes=5)
    all_labels, all_predictions = [], []
    for _ in range(3):
        labels = blocky_labels(rng, 2, 9, 7, 4, block=1, ignore_fraction=0.1)  # no class 4
        logits = rng.normal(size=(2, 9, 7, 5)).astype("float32")
        metric.update_state(labels, logits)
        all_labels.append(labels)
        all_predictions.append(logits.argmax(-1))
    expected = reference_dice(np.stack(all_labels), np.stack(all_predictions), 5)
    np.testing.assert_allclose(metric.per_class_dice(), expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(float(metric.result()), np.nanmean(expected), rtol=1e-6)
    iou = iou_from_confusion(metric.confusion_matrix())
    np.testing.assert_allclose(metric.per_class_dice(), 2 * iou / (1 + iou), rtol=1e-12)
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0 and float(metric.result()) == 0.0


def test_every_config_round_trips():
    metrics = [
        MeanIoU(19, ignore_index=0, name="miou"),
        MeanDice(7, ignore_index=3, name="dice"),
        BoundaryIoU(5, ignore_index=9, dilation_ratio=0.01, name="biou"),
        BoundaryIoU(5, dilation=4),
        TrimapIoU(6, ignore_index=1, width=7, name="trimap"),
    ]
    for metric in metrics:
        config = metric.get_config()
        clone = type(metric).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(restored) is type(metric) and restored.get_config() == config
    assert metrics[2].get_config()["dilation_ratio"] == 0.01
    assert metrics[3].get_config()["dilation"] == 4
    assert metrics[4].get_config()["width"] == 7


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BoundaryIoU(3, dilation=0), "`dilation` must be at least 1"),
        (lambda: BoundaryIoU(3, dilation=1.5), "`dilation` must be an int"),
        (lambda: BoundaryIoU(3, dilation_ratio=0), "`dilation_ratio` must be a finite number"),
        (lambda: BoundaryIoU(3, dilation_ratio=float("nan")), "`dilation_ratio`"),
        (lambda: BoundaryIoU(3, dilation_ratio="2%"), "`dilation_ratio`"),
        (lambda: TrimapIoU(3, width=0), "`width` must be at least 1"),
        (lambda: TrimapIoU(3, width=True), "`width` must be an int"),
        (lambda: MeanDice(3, ignore_index="void"), "`ignore_index` must be an int"),
        (lambda: BoundaryIoU(0), "`num_classes` must be at least 1"),
    ],
)
def test_bad_arguments_name_the_culprit(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("cls", [MeanIoU, MeanDice, BoundaryIoU, TrimapIoU])
def test_bad_shapes_name_the_culprit(cls):
    metric = cls(3)
    labels = np.zeros((2, 8, 8), "int32")
    with pytest.raises(ValueError, match=r"y_pred has 4 channels .* num_classes=3"):
        metric.update_state(labels, np.zeros((2, 8, 8, 4), "float32"))
    with pytest.raises(ValueError, match=r"labels \(y_true\) must have shape"):
        metric.update_state(labels[0], np.zeros((8, 8), "int32"))
    with pytest.raises(ValueError, match=r"labels shape \(2, 8, 8\) and y_pred shape \(2, 8, 9\)"):
        metric.update_state(labels, np.zeros((2, 8, 9), "int32"))
    with pytest.raises(ValueError, match="without a 'logits' entry"):
        metric.update_state(labels, {"aux_logits": np.zeros((2, 8, 8, 3), "float32")})
    with pytest.raises(ValueError, match=f"{cls.__name__}: y_pred must be scores"):
        metric.update_state(labels, np.zeros((2, 8, 8, 3, 1), "float32"))


def test_compiled_with_unknown_image_sizes():
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None), tf.int32)
    rng = np.random.default_rng(7)
    labels = blocky_labels(rng, 2, 11, 13, 3)
    predictions = noisy_predictions(rng, labels, 3)
    by_pixels = BoundaryIoU(3, dilation=2)
    tf.function(by_pixels.update_state, input_signature=[spec, spec])(labels, predictions)
    expected, _ = reference_boundary_iou(labels, predictions, 3, dilation=2)
    np.testing.assert_allclose(by_pixels.per_class_iou(), expected, rtol=1e-12, equal_nan=True)
    trimap = TrimapIoU(3, width=2)
    tf.function(trimap.update_state, input_signature=[spec, spec])(labels, predictions)
    np.testing.assert_allclose(trimap.per_class_iou(),
                               reference_trimap_iou(labels, predictions, 3, width=2),
                               rtol=1e-12, equal_nan=True)
    # XLA, with the sizes known: the band width comes from the ratio.
    xla = BoundaryIoU(3, dilation_ratio=0.1)  # round(0.1 * sqrt(11^2 + 13^2)) = 2
    tf.function(xla.update_state, jit_compile=True)(labels, predictions)
    np.testing.assert_allclose(xla.per_class_iou(), expected, rtol=1e-12, equal_nan=True)
    xla_trimap = TrimapIoU(3, width=2)
    tf.function(xla_trimap.update_state, jit_compile=True)(labels, predictions)
    np.testing.assert_array_equal(xla_trimap.confusion_matrix(), trimap.confusion_matrix())
    by_ratio = BoundaryIoU(3)
    with pytest.raises(ValueError, match="pass `dilation=` in pixels"):
        tf.function(by_ratio.update_state, input_signature=[spec, spec])(labels, predictions)


def test_in_compile_fit_and_evaluate_on_tensorflow():
    from alignseg_keras.testing import tiny_alignseg

    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    masks = (images[..., 0] // 86).astype("int32")  # classes 0..2 from the red channel
    masks[:, :3] = 255
    model = tiny_alignseg(3, seed=0)
    metrics = [MeanIoU(3), MeanDice(3), BoundaryIoU(3, dilation_ratio=0.05), TrimapIoU(3, width=2)]
    model.compile(metrics=metrics)
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    for name in ("mean_iou", "mean_dice", "boundary_iou", "trimap_iou"):
        assert 0.0 <= history.history[name][0] <= 1.0
    scores = model.evaluate(images, masks, batch_size=2, verbose=0, return_dict=True)
    predictions = keras.ops.convert_to_numpy(model(images, training=False)).argmax(-1)
    # dilation: round(0.05 * sqrt(32^2 + 32^2)) = round(2.26) = 2.
    boundary, _ = reference_boundary_iou(masks, predictions, 3, dilation=2)
    expected = {
        "mean_iou": np.nanmean(reference_iou(masks, predictions, 3)),
        "mean_dice": np.nanmean(reference_dice(masks, predictions, 3)),
        "boundary_iou": np.nanmean(boundary),
        "trimap_iou": np.nanmean(reference_trimap_iou(masks, predictions, 3, width=2)),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(scores[name], value, rtol=1e-5, err_msg=name)


JAX_SCRIPT = r"""
import json, sys
import jax
import keras
import numpy as np
from alignseg_keras.metrics import BoundaryIoU, MeanDice, MeanIoU, TrimapIoU

assert keras.backend.backend() == "jax"
data = np.load(sys.argv[1])
labels, predictions, images = data["labels"], data["predictions"], data["images"]
make = lambda: [MeanIoU(4), MeanDice(4), BoundaryIoU(4, dilation_ratio=0.1), TrimapIoU(4, width=2)]
out = {}
for metric in make():  # eager
    metric.update_state(labels, predictions)
    out["eager_" + metric.name] = float(metric.result())
for metric in make():  # jax.jit of the stateless API, as Keras' JAX trainer runs it
    update = jax.jit(metric.stateless_update_state)
    variables = [v.value for v in metric.variables]
    for start in range(0, len(labels), 2):
        variables = update(variables, labels[start : start + 2], predictions[start : start + 2])
    out["jit_" + metric.name] = float(jax.jit(metric.stateless_result)(variables))
model = keras.Sequential([keras.Input(images.shape[1:]), keras.layers.Conv2D(4, 1)])
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
              metrics=make())
out["model"] = model.evaluate(images, labels, batch_size=2, verbose=0, return_dict=True)
out["model_predictions"] = np.asarray(model.predict(images, batch_size=2, verbose=0)).argmax(-1).tolist()
print("RESULT " + json.dumps(out))
"""


def test_on_jax_eagerly_jitted_and_compiled(tmp_path):
    rng = np.random.default_rng(9)
    labels = blocky_labels(rng, 4, 12, 16, 4)
    predictions = noisy_predictions(rng, labels, 4)
    images = rng.normal(size=(4, 12, 16, 3)).astype("float32")
    np.savez(tmp_path / "data.npz", labels=labels, predictions=predictions, images=images)
    environment = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "data.npz")],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])

    def expected(labels, predictions):
        # dilation: round(0.1 * sqrt(12^2 + 16^2)) = 2.
        return {
            "mean_iou": np.nanmean(reference_iou(labels, predictions, 4)),
            "mean_dice": np.nanmean(reference_dice(labels, predictions, 4)),
            "boundary_iou": np.nanmean(reference_boundary_iou(labels, predictions, 4,
                                                              dilation=2)[0]),
            "trimap_iou": np.nanmean(reference_trimap_iou(labels, predictions, 4, width=2)),
        }

    for name, value in expected(labels, predictions).items():
        np.testing.assert_allclose(out["eager_" + name], value, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(out["jit_" + name], value, rtol=1e-6, err_msg=name)
    model_predictions = np.array(out["model_predictions"])
    for name, value in expected(labels, model_predictions).items():
        np.testing.assert_allclose(out["model"][name], value, rtol=1e-5, err_msg=name)


def test_a_predicted_id_that_is_no_class_is_a_miss():
    # Worked by hand: class 0: tp 2; class 1: tp 1, and one pixel predicted 255 (no class).
    labels = np.array([[[0, 0, 1, 1]]])
    predictions = np.array([[[0, 0, 1, 255]]])
    iou, dice = MeanIoU(2), MeanDice(2)
    for metric in (iou, dice):
        metric.update_state(labels, predictions)
        assert metric.confusion_matrix().tolist() == [[2, 0], [0, 1]]
        assert metric.unclassified_pixels().tolist() == [0, 1]
        np.testing.assert_allclose(metric.pixel_accuracy(), 3 / 4)
    np.testing.assert_allclose(iou.per_class_iou(), [1.0, 1 / 2])
    np.testing.assert_allclose(float(iou.result()), 3 / 4, rtol=1e-6)
    np.testing.assert_allclose(dice.per_class_dice(), [1.0, 2 / 3])
    np.testing.assert_allclose(float(dice.result()), 5 / 6, rtol=1e-6)


def test_predicted_ids_outside_the_classes_against_the_official_counts():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=(2, 9, 7))
    labels[rng.random(labels.shape) < 0.1] = 255
    predictions = rng.choice([-1, 0, 1, 2, 3, 4, 255], size=labels.shape)
    iou, dice = MeanIoU(4), MeanDice(4)
    iou.update_state(labels, predictions)
    dice.update_state(labels, predictions)
    expected_iou = official_cityscapes_iou(labels, predictions, 4)
    np.testing.assert_allclose(iou.per_class_iou(), expected_iou, equal_nan=True)
    np.testing.assert_allclose(float(iou.result()), np.nanmean(expected_iou), rtol=1e-6)
    expected_dice = reference_dice(labels, predictions, 4)
    np.testing.assert_allclose(dice.per_class_dice(), expected_dice, equal_nan=True)
    np.testing.assert_allclose(float(dice.result()), np.nanmean(expected_dice), rtol=1e-6)
    labelled = labels != 255
    assert iou.confusion_matrix().sum() + iou.unclassified_pixels().sum() == labelled.sum()


def test_pixel_accuracy_with_no_pixel_counted_is_nan_as_the_ious():
    # It was 0.0, beside per-class IoUs of NaN ("n/a").
    metric = MeanIoU(num_classes=3)
    metric.update_state(np.full((1, 4, 4), 255), np.zeros((1, 4, 4), "int64"))
    assert metric.counted_pixels() == 0 and np.isnan(metric.pixel_accuracy())
    assert np.isnan(metric.per_class_iou()).all()
    metric.update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), "int64"))
    assert metric.counted_pixels() == 4 and metric.pixel_accuracy() == 1.0


def test_pixels_of_weight_zero_are_not_counted_as_keras_mean_iou_does():
    # The weights were ignored: a 0/1 validity mask as sample_weight left the mIoU unchanged
    # while the loss moved.
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, (3, 9, 11))
    predictions = np.where(rng.random((3, 9, 11)) < 0.6, labels, rng.integers(0, 4, (3, 9, 11)))
    mask = (rng.random((3, 9, 11)) < 0.7).astype("float32")
    for weight in (mask, mask[..., None], np.array([1.0, 0.0, 1.0], "float32")):
        reference = keras.metrics.MeanIoU(num_classes=4)  # Keras', independent of ours
        per_pixel = {1: weight[:, None, None], 3: weight, 4: weight[..., 0]}[weight.ndim]
        reference.update_state(labels, predictions,  # it takes per-pixel weights only
                               sample_weight=np.broadcast_to(per_pixel, labels.shape))
        ours = MeanIoU(num_classes=4)
        ours.update_state(labels, predictions, sample_weight=weight)
        np.testing.assert_allclose(float(ours.result()), float(reference.result()), rtol=1e-6)
    # Any other weight counts a pixel once; weight 0 is an ignored pixel for BoundaryIoU too.
    weighted, plain = MeanIoU(num_classes=4), MeanIoU(num_classes=4)
    weighted.update_state(labels, predictions, sample_weight=mask * 3.5)
    plain.update_state(np.where(mask > 0, labels, 255), predictions)
    np.testing.assert_array_equal(weighted.confusion_matrix(), plain.confusion_matrix())
    weighted, plain = BoundaryIoU(num_classes=4), BoundaryIoU(num_classes=4)
    weighted.update_state(labels, predictions, sample_weight=mask)
    plain.update_state(np.where(mask > 0, labels, 255), predictions)
    assert float(weighted.result()) == float(plain.result())
    scalar, plain = MeanIoU(num_classes=4), MeanIoU(num_classes=4)  # Keras' takes a scalar too
    scalar.update_state(labels, predictions, sample_weight=2.0)
    plain.update_state(labels, predictions)
    np.testing.assert_array_equal(scalar.confusion_matrix(), plain.confusion_matrix())
    with pytest.raises(ValueError, match=r"sample_weight of shape \(3, 9, 10\) does not match"):
        MeanIoU(num_classes=4).update_state(labels, predictions, sample_weight=mask[..., :10])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a tf.function's shapes")
def test_a_traced_per_pixel_weight_of_unknown_shape():
    # Under a tf.function of unknown shapes, a (B, H, W, 1) weight was refused (its last
    # dimension unknown), then failed to squeeze.
    import tensorflow as tf

    metric = MeanIoU(num_classes=4)
    spec = [tf.TensorSpec([None] * 3, tf.int32)] * 2 + [tf.TensorSpec([None] * 4, tf.float32)]

    @tf.function(input_signature=spec)
    def update(labels, predictions, weight):
        metric.update_state(labels, predictions, sample_weight=weight)
        return metric.result()

    rng = np.random.default_rng(0)
    labels, predictions = (rng.integers(0, 4, (2, 5, 6)).astype("int32") for _ in range(2))
    weight = (rng.random((2, 5, 6, 1)) < 0.5).astype("float32")
    expected = MeanIoU(num_classes=4)
    expected.update_state(np.where(weight[..., 0] > 0, labels, 255), predictions)
    assert float(update(labels, predictions, weight)) == float(expected.result())
