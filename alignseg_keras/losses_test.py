import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.losses import CombinedLoss
from alignseg_keras.losses import DiceLoss
from alignseg_keras.losses import FocalLoss
from alignseg_keras.losses import LovaszSoftmaxLoss
from alignseg_keras.losses import OhemCrossEntropy
from alignseg_keras.losses import SegmentationCrossEntropy
from alignseg_keras.losses import combine
from alignseg_keras.losses import deep_supervision_loss
from alignseg_keras.testing import loss_references as ref


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_cross_entropy_against_a_hand_computed_value():
    logits = np.zeros((1, 1, 3, 2), "float32")
    logits[0, 0, 0] = [2.0, 0.0]  # label 0: -log(e^2 / (e^2 + 1))
    logits[0, 0, 1] = [0.0, 1.0]  # label 0: -log(1 / (1 + e))
    labels = np.array([[[0, 0, 255]]])  # the third pixel is ignored
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.e)) / 2
    value = SegmentationCrossEntropy()(labels, logits)
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)


def test_class_weights_follow_pytorch_weighted_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 4, 5))
    labels[0, 0] = 255
    weights = np.array([0.5, 2.0, 1.0])
    ce = -np.take_along_axis(log_softmax(logits), np.where(labels == 255, 0, labels)[..., None], -1)[..., 0]
    pixel_w = np.where(labels == 255, 0.0, weights[np.where(labels == 255, 0, labels)])
    expected = (ce * pixel_w).sum() / pixel_w.sum()
    value = SegmentationCrossEntropy(class_weights=weights)(labels[..., None], logits)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_logits_are_upsampled_to_label_resolution():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(1, 13, 13))
    up = np.asarray(resize_bilinear(logits, (13, 13), align_corners=True))
    direct = SegmentationCrossEntropy()(labels, up)
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels, logits)), float(direct), rtol=1e-6)


def test_all_ignored_gives_zero_not_nan():
    value = SegmentationCrossEntropy()(np.full((1, 2, 2), 255), np.zeros((1, 2, 2, 3), "float32"))
    assert float(value) == 0.0


def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_valid_pixels():
    # d/dz of mean CE = (softmax(z) - onehot(y)) / #valid at valid pixels, 0 at ignored ones.
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    labels = rng.integers(0, 5, size=(2, 3, 4))
    labels[0, 0, :2] = 255
    valid = labels != 255
    probs = np.exp(log_softmax(logits))
    expected = (probs - np.eye(5)[np.where(valid, labels, 0)]) * valid[..., None] / valid.sum()
    variable = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = SegmentationCrossEntropy()(labels, variable)
    np.testing.assert_allclose(tape.gradient(value, variable).numpy(), expected, atol=1e-7)


ALL_LOSSES = [
    SegmentationCrossEntropy(), OhemCrossEntropy(min_kept=5), FocalLoss(), DiceLoss(),
    LovaszSoftmaxLoss(),
]
ALL_IDS = ["cross_entropy", "ohem", "focal", "dice", "lovasz"]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=ALL_IDS)
def test_labels_out_of_range_in_tensors_are_left_out_as_ignored_ones(loss):
    # They counted as valid pixels of loss 0 in the pixel losses (2.420 against
    # 2.567 in the review's case) and as background of every class in Dice and
    # Lovász; with class weights TensorFlow failed in a gather and JAX gave NaN.
    labels, logits = random_case(21)
    outside = labels.copy()
    outside[0, 0, :3] = [7, -1, 4]
    ignored = np.where((outside >= 0) & (outside < 4), outside, IGNORE_INDEX)
    expected = float(loss(ignored, logits))
    np.testing.assert_allclose(float(loss(tf.constant(outside), logits)), expected, rtol=1e-6)
    weighted = SegmentationCrossEntropy(class_weights=[1.0, 2.0, 0.5, 1.0])
    np.testing.assert_allclose(float(weighted(tf.constant(outside), logits)),
                               float(weighted(ignored, logits)), rtol=1e-6)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=ALL_IDS)
def test_numpy_labels_out_of_range_are_refused_with_their_values(loss):
    labels, logits = random_case(22)
    labels[0, 0, :2] = [7, -1]
    with pytest.raises(ValueError, match=r"`y_true` contains value\(s\) \[-1, 7\] outside \[0, 4\) "
                                         r"in 2 pixel\(s\)"):
        loss(labels, logits)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=ALL_IDS)
def test_logits_larger_than_the_labels_or_channels_first_are_refused(loss):
    labels, logits = random_case(23)
    with pytest.raises(ValueError, match=r"logits \(3, 10, 12, 4\) do not fit the labels \(3, 5, 6\)"):
        loss(labels, np.repeat(np.repeat(logits, 2, axis=1), 2, axis=2))
    labels, logits = random_case(23, shape=(3, 16, 24))
    with pytest.raises(ValueError, match="look channels-first"):
        loss(labels, np.transpose(logits, (0, 3, 1, 2)))  # (3, 4, 16, 24): PyTorch's layout


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=ALL_IDS)
def test_smaller_logits_that_could_be_channels_first_are_taken_when_they_fit(loss):
    # (3, 4, 8, 8) against labels (3, 8, 8): a map of half height, 8 classes; the
    # channels-first hint refused it.
    labels, _ = random_case(27, shape=(3, 8, 8))
    logits = np.random.default_rng(0).normal(size=(3, 4, 8, 4)).astype("float32")
    direct = float(loss(labels, logits))
    upsampled = np.asarray(resize_bilinear(logits, (8, 8), align_corners=True))
    np.testing.assert_allclose(direct, float(loss(labels, upsampled)), rtol=1e-6)


def test_fractional_numpy_labels_are_refused():
    # Masks divided by 255 (255 / 255 = 1.0: class 1) were taken as class ids.
    labels, logits = random_case(28)
    with pytest.raises(ValueError, match="Were they divided by 255"):
        SegmentationCrossEntropy()(labels / 255.0, logits)


def test_a_combination_of_keras_terms_takes_their_own_ignore_label():
    labels, logits = random_case(29)
    labels = np.where(labels == IGNORE_INDEX, -1, labels)
    keras_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    np.testing.assert_allclose(float(CombinedLoss([keras_ce])(labels, logits)),
                               float(keras_ce(labels, logits)), rtol=1e-6)


def test_a_loss_saved_with_an_ignored_reduction_loads_with_a_warning():
    # Saved before 2026-12-08, when the reduction was ignored: such a model did not load.
    config = keras.saving.serialize_keras_object(SegmentationCrossEntropy())
    config["config"]["reduction"] = "sum"
    with pytest.warns(UserWarning, match="saved with reduction='sum', which it ignored"):
        loss = keras.saving.deserialize_keras_object(config)
    assert loss.reduction == "sum_over_batch_size"


def test_class_weights_of_the_cross_entropies_are_checked():
    # They were taken as given: an extra entry unused, a negative one accepted, too few
    # a gather error on TensorFlow and NaN on JAX.
    labels, logits = random_case(24)
    for loss_type in (SegmentationCrossEntropy, OhemCrossEntropy):
        with pytest.raises(ValueError, match=f"{loss_type.__name__}: `class_weights` must be a "
                                             "non-empty list of numbers >= 0"):
            loss_type(class_weights=[-1.0, 1.0, 1.0, 1.0])
        with pytest.raises(ValueError, match="per-class numbers"):
            loss_type(class_weights=2.0)
        for weights in ([1.0, 1.0], [1.0] * 5):
            with pytest.raises(ValueError, match=f"{loss_type.__name__}: `class_weights` has "
                                                 f"{len(weights)} entries but the logits have 4 classes"):
                loss_type(class_weights=weights)(labels, logits)


@pytest.mark.parametrize("loss_type", [SegmentationCrossEntropy, OhemCrossEntropy, FocalLoss,
                                       DiceLoss, LovaszSoftmaxLoss])
def test_a_reduction_other_than_the_default_is_refused(loss_type):
    # It was saved and ignored: "sum" and "none" gave the mean.
    for reduction in ("sum", None, "none", "mean"):
        with pytest.raises(ValueError, match=f"{loss_type.__name__} reduces itself .* received {reduction!r}"):
            loss_type(reduction=reduction)
    with pytest.raises(ValueError, match="CombinedLoss reduces itself"):
        CombinedLoss([SegmentationCrossEntropy()], reduction="sum")
    assert loss_type().get_config()["reduction"] == "sum_over_batch_size"


def test_a_per_pixel_sample_weight_of_another_size_is_named():
    labels, logits = random_case(25)  # labels (3, 5, 6)
    with pytest.raises(ValueError, match=r"labels' height and width \(5, 6\); received shape \(3, 10, 12\)"):
        SegmentationCrossEntropy()(labels, logits, sample_weight=np.ones((3, 10, 12), "float32"))


@pytest.mark.parametrize("loss", [DiceLoss(per_image=True), LovaszSoftmaxLoss(per_image=True)],
                         ids=["dice", "lovasz"])
def test_per_image_losses_leave_out_images_of_ignored_pixels_only(loss):
    # Counted as 0, the unlabelled image halved the other's loss and gradient.
    labels, logits = random_case(26)  # image 2 of ignored pixels only
    np.testing.assert_allclose(float(loss(labels, logits)), float(loss(labels[:2], logits[:2])), rtol=1e-6)
    assert float(loss(np.full_like(labels, IGNORE_INDEX), logits)) == 0.0


def test_cross_entropy_is_one_fused_op_on_tensorflow():
    # The fused op keeps only its gradient for the backward pass; log_softmax
    # times a one-hot kept three full-size copies of the logits.
    loss = SegmentationCrossEntropy()
    graph = tf.function(loss).get_concrete_function(
        tf.TensorSpec((1, 8, 8), tf.int32), tf.TensorSpec((1, 8, 8, 3), tf.float32)
    ).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "SparseSoftmaxCrossEntropyWithLogits" in op_types
    assert "LogSoftmax" not in op_types and "OneHot" not in op_types


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    # Four pixels with true-class probabilities 0.9, 0.8, 0.5, 0.2 (two classes).
    probs = np.array([0.9, 0.8, 0.5, 0.2])
    logits = np.stack([np.log(probs), np.log(1 - probs)], -1).reshape(1, 1, 4, 2).astype("float32")
    labels = np.zeros((1, 1, 4), "int32")
    ce = -np.log(probs)
    # Threshold 0.7 keeps 0.5 and 0.2.
    value = OhemCrossEntropy(threshold=0.7, min_kept=1)(labels, logits)
    np.testing.assert_allclose(float(value), ce[2:].mean(), rtol=1e-5)
    # min_kept=3 raises the threshold to the 3rd smallest probability (0.8).
    value = OhemCrossEntropy(threshold=0.7, min_kept=3)(labels, logits)
    np.testing.assert_allclose(float(value), ce[1:].mean(), rtol=1e-5)
    # min_kept above the number of valid pixels keeps all of them.
    labels_ignored = labels.copy()
    labels_ignored[0, 0, 3] = 255
    value = OhemCrossEntropy(threshold=0.1, min_kept=100)(labels_ignored, logits)
    np.testing.assert_allclose(float(value), ce[:3].mean(), rtol=1e-5)


def test_ohem_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        OhemCrossEntropy(threshold=1.5)
    with pytest.raises(ValueError, match="min_kept"):
        OhemCrossEntropy(min_kept=-1)


def test_deep_supervision_weights_the_auxiliary_loss():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=(1, 4, 4))
    main, aux = (rng.normal(size=(1, 4, 4, 3)).astype("float32") for _ in range(2))
    loss = SegmentationCrossEntropy()
    total = deep_supervision_loss(loss, labels, main, aux, aux_weight=0.4)
    expected = float(loss(labels, main)) + 0.4 * float(loss(labels, aux))
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    ohem = OhemCrossEntropy(threshold=0.7, min_kept=4, class_weights=[1.0, 5.0, 1.0])
    total = deep_supervision_loss(ohem, labels, main, aux, aux_weight=0.1, aux_loss=loss)
    expected = float(ohem(labels, main)) + 0.1 * float(loss(labels, aux))
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    assert float(total) != pytest.approx(float(ohem(labels, main)) + 0.1 * float(ohem(labels, aux)))


def test_config_round_trip():
    loss = OhemCrossEntropy(threshold=0.6, min_kept=200000, class_weights=[1.0, 2.0])
    clone = OhemCrossEntropy.from_config(loss.get_config())
    assert (clone.threshold, clone.min_kept, clone.class_weights) == (0.6, 200000, [1.0, 2.0])


# --- Dice, focal, Lovász-Softmax and combined losses ---------------------------------

TOL = dict(rtol=2e-5, atol=2e-6)  # float32 sums of a few hundred terms


def test_sample_weights_weight_images_and_pixels_in_the_mean():
    labels, logits = random_case(seed=3)
    per_image = np.array([2.0, 0.5, 1.0], "float32")
    per_pixel = np.random.default_rng(4).uniform(0, 3, labels.shape).astype("float32")
    for weights in (per_image, per_pixel, per_pixel[..., None]):
        expected = ref.reference_cross_entropy(labels, logits, class_weights=[1, 2, 1, 3],
                                               sample_weights=np.squeeze(weights))
        loss = SegmentationCrossEntropy(class_weights=[1, 2, 1, 3])
        np.testing.assert_allclose(float(loss(labels, logits, sample_weight=weights)), expected, **TOL)
        expected = ref.reference_focal(labels, logits, gamma=1.5, sample_weights=np.squeeze(weights))
        value = FocalLoss(gamma=1.5)(labels, logits, sample_weight=weights)
        np.testing.assert_allclose(float(value), expected, **TOL)
    # A weight of 0 leaves an image out: the loss of the others alone (it was the mean
    # loss times the mean weight, whatever image the weight selected).
    only_first = SegmentationCrossEntropy()(labels, logits, sample_weight=np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(float(only_first), ref.reference_cross_entropy(labels[:1], logits[:1]), **TOL)
    ohem = OhemCrossEntropy(threshold=1.0)  # keeps every valid pixel: the cross-entropy
    np.testing.assert_allclose(float(ohem(labels, logits, sample_weight=per_image)),
                               ref.reference_cross_entropy(labels, logits, sample_weights=per_image), **TOL)
    # With a binding min_kept, pixels of weight 0 are not among the hardest it keeps.
    ohem = OhemCrossEntropy(threshold=0.05, min_kept=7)
    np.testing.assert_allclose(float(ohem(labels, logits, sample_weight=np.array([1.0, 0.0, 0.0]))),
                               float(ohem(labels[:1], logits[:1])), rtol=1e-6)
    combined = combine((SegmentationCrossEntropy(), 1.0), (FocalLoss(gamma=1.5), 0.5))
    np.testing.assert_allclose(
        float(combined(labels, logits, sample_weight=per_image)),
        ref.reference_cross_entropy(labels, logits, sample_weights=per_image)
        + 0.5 * ref.reference_focal(labels, logits, gamma=1.5, sample_weights=per_image), **TOL)
    for region in (DiceLoss(), LovaszSoftmaxLoss(), combine(SegmentationCrossEntropy(), DiceLoss())):
        with pytest.raises(ValueError, match="takes no `sample_weight`"):
            region(labels, logits, sample_weight=per_image)
    with pytest.raises(ValueError, match=r"per image \(batch,\) or per pixel"):
        SegmentationCrossEntropy()(labels, logits, sample_weight=per_image[:, None])


def test_sample_weights_of_a_rank_known_at_run_time():
    # Keras relaxes the traced shapes once a step has seen both (B,) and (B, H, W) weights.
    labels, logits = random_case(seed=3)
    loss = SegmentationCrossEntropy()
    traced = tf.function(lambda y, p, w: loss(y, p, sample_weight=w),
                         input_signature=[tf.TensorSpec(labels.shape, tf.int32),
                                          tf.TensorSpec(logits.shape, tf.float32),
                                          tf.TensorSpec(None, tf.float32)])
    for weights in (np.array([2.0, 0.5, 1.0], "float32"),
                    np.random.default_rng(4).uniform(0, 3, labels.shape).astype("float32")):
        np.testing.assert_allclose(float(traced(labels, logits, weights)),
                                   float(loss(labels, logits, sample_weight=weights)), rtol=1e-6)


def hand_case():
    """2x2 pixels, 2 classes: class-1 probabilities 0.2, 0.9, 0.6, 0.3; labels 0, 1, 1, 1."""
    probs = np.array([0.2, 0.9, 0.6, 0.3])
    logits = np.stack([np.log(1 - probs), np.log(probs)], -1).reshape(1, 2, 2, 2).astype("float32")
    labels = np.array([0, 1, 1, 1]).reshape(1, 2, 2)
    return labels, logits


def random_case(seed=0, shape=(3, 5, 6), num_classes=4):
    """Random logits and labels, with ignored pixels, a class absent from image 1,
    and image 2 entirely ignored."""
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=shape + (num_classes,))).astype("float32")
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < 0.2] = IGNORE_INDEX
    labels[1][labels[1] == 3] = 2
    labels[2] = IGNORE_INDEX
    return labels, logits


def one_hot_logits(predictions, num_classes, scale=40.0):
    return (scale * np.eye(num_classes)[predictions]).astype("float32")


# Dice


def test_dice_hand_computed_2x2():
    labels, logits = hand_case()
    # class 1: 2 * 1.8 / (2.0 + 3); class 0: 2 * 0.8 / (2.0 + 1)
    np.testing.assert_allclose(float(DiceLoss(smooth=0)(labels, logits)), 1 - (3.6 / 5 + 1.6 / 3) / 2, **TOL)
    np.testing.assert_allclose(float(DiceLoss(smooth=1)(labels, logits)), 1 - (4.6 / 6 + 2.6 / 4) / 2, **TOL)
    # Class weights weight the mean over classes: only class 1.
    np.testing.assert_allclose(
        float(DiceLoss(smooth=0, class_weights=[0.0, 1.0])(labels, logits)), 1 - 3.6 / 5, **TOL
    )
    np.testing.assert_allclose(
        float(DiceLoss(smooth=0, class_weights=[1.0, 3.0])(labels, logits)), 1 - (3.6 / 5 * 3 + 1.6 / 3) / 4, **TOL
    )


def test_dice_of_a_perfect_prediction_is_zero():
    labels, _ = random_case(1)
    logits = one_hot_logits(np.where(labels == IGNORE_INDEX, 0, labels), 4)
    for kwargs in ({}, {"smooth": 0.0}, {"per_image": True}, {"classes": "present"}):
        assert abs(float(DiceLoss(**kwargs)(labels, logits))) < 1e-6, kwargs


def test_dice_classes_absent_from_prediction_and_truth():
    # Class 2 is in neither the labels nor (to float32) the prediction.
    labels = np.array([[[0, 1], [1, 1]]])
    logits = one_hot_logits(np.array([[[0, 0], [1, 1]]]), 3)
    class_0, class_1 = (2 * 1 + 1) / (2 + 1 + 1), (2 * 2 + 1) / (2 + 3 + 1)
    # With smooth > 0 its Dice is 1: it counts in the mean with "all", not with "present".
    np.testing.assert_allclose(float(DiceLoss(classes="all")(labels, logits)), 1 - (class_0 + class_1 + 1) / 3, **TOL)
    np.testing.assert_allclose(float(DiceLoss(classes="present")(labels, logits)), 1 - (class_0 + class_1) / 2, **TOL)
    np.testing.assert_allclose(float(DiceLoss(classes=[1])(labels, logits)), 1 - class_1, **TOL)
    # With smooth 0 its Dice is 0 (softmax probabilities are never exactly 0): a full error.
    dice_0, dice_1 = 2 * 1 / (2 + 1), 2 * 2 / (2 + 3)
    np.testing.assert_allclose(float(DiceLoss(smooth=0, classes="all")(labels, logits)),
                               ((1 - dice_0) + (1 - dice_1) + 1) / 3, **TOL)
    np.testing.assert_allclose(float(DiceLoss(smooth=0, classes="present")(labels, logits)),
                               ((1 - dice_0) + (1 - dice_1)) / 2, **TOL)
    # A class predicted but absent from the truth: penalised with "all" only.
    logits = one_hot_logits(np.array([[[2, 1], [1, 1]]]), 3)
    class_0, class_1, class_2 = 1 / (1 + 1), (2 * 3 + 1) / (3 + 3 + 1), 1 / (1 + 1)
    np.testing.assert_allclose(float(DiceLoss(classes="all")(labels, logits)), 1 - (class_0 + class_1 + class_2) / 3, **TOL)
    np.testing.assert_allclose(float(DiceLoss(classes="present")(labels, logits)), 1 - (class_0 + class_1) / 2, **TOL)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["all", "present", [0, 3]])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_matches_the_reference(per_image, classes, smooth):
    labels, logits = random_case(2)
    for class_weights in (None, [0.5, 2.0, 1.0, 3.0]):
        kwargs = dict(smooth=smooth, per_image=per_image, classes=classes, class_weights=class_weights)
        expected = ref.reference_dice(labels, logits, **kwargs)
        np.testing.assert_allclose(float(DiceLoss(**kwargs)(labels, logits)), expected, **TOL)


# Focal


def test_focal_hand_computed_2x2():
    labels, logits = hand_case()
    p_t = np.array([0.8, 0.9, 0.6, 0.3])
    terms = -((1 - p_t) ** 2) * np.log(p_t)
    np.testing.assert_allclose(float(FocalLoss()(labels, logits)), terms.mean(), **TOL)
    # alpha scales each pixel and divides by the pixel count; class_weights also divide.
    alpha = np.array([0.25, 1.0])[[0, 1, 1, 1]]
    np.testing.assert_allclose(float(FocalLoss(alpha=[0.25, 1.0])(labels, logits)), (alpha * terms).mean(), **TOL)
    np.testing.assert_allclose(
        float(FocalLoss(class_weights=[0.25, 1.0])(labels, logits)), (alpha * terms).sum() / alpha.sum(), **TOL
    )
    np.testing.assert_allclose(float(FocalLoss(alpha=0.5)(labels, logits)), 0.5 * terms.mean(), **TOL)


def test_focal_with_gamma_zero_is_cross_entropy():
    labels, logits = random_case(3)
    for weights in (None, [0.5, 2.0, 1.0, 3.0]):
        focal = FocalLoss(gamma=0.0, class_weights=weights)(labels, logits)
        ce = SegmentationCrossEntropy(class_weights=weights)(labels, logits)
        np.testing.assert_allclose(float(focal), float(ce), rtol=1e-6)
        np.testing.assert_allclose(float(ce), ref.reference_cross_entropy(labels, logits, class_weights=weights), **TOL)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, 0.25, [0.25, 0.5, 1.0, 2.0]])
def test_focal_matches_the_reference(gamma, alpha):
    labels, logits = random_case(4)
    for class_weights in (None, [1.0, 0.0, 2.0, 1.0]):
        expected = ref.reference_focal(labels, logits, gamma=gamma, alpha=alpha, class_weights=class_weights)
        value = FocalLoss(gamma=gamma, alpha=alpha, class_weights=class_weights)(labels, logits)
        np.testing.assert_allclose(float(value), expected, **TOL)


# Lovász-Softmax


def test_lovasz_hand_computed_2x2():
    labels, logits = hand_case()
    # Class 1: errors 0.7, 0.4, 0.2, 0.1 (foreground, foreground, background, foreground);
    # Delta_J of the growing sets 1/3, 2/3, 3/4, 1. Class 0: errors 0.7, 0.4, 0.2 (its
    # only foreground pixel), 0.1; Delta_J 1/2, 2/3, 1, 1.
    class_1 = 0.7 / 3 + 0.4 / 3 + 0.2 / 12 + 0.1 / 4
    class_0 = 0.7 / 2 + 0.4 / 6 + 0.2 / 3
    np.testing.assert_allclose(float(LovaszSoftmaxLoss()(labels, logits)), (class_0 + class_1) / 2, **TOL)
    np.testing.assert_allclose(
        float(LovaszSoftmaxLoss(class_weights=[0.0, 1.0])(labels, logits)), class_1, **TOL
    )
    np.testing.assert_allclose(float(LovaszSoftmaxLoss(classes=[0])(labels, logits)), class_0, **TOL)
    assert abs(ref.reference_lovasz_softmax(labels, logits) - (class_0 + class_1) / 2) < 1e-7  # float32 logits


def test_lovasz_of_one_hot_probabilities_is_the_jaccard_loss():
    # At one-hot probabilities the Lovász extension equals Delta_J: 1 - IoU per class.
    labels, _ = random_case(5)
    rng = np.random.default_rng(5)
    predictions = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, 4, labels.shape)) % 256
    predictions = np.where(predictions == IGNORE_INDEX, 1, predictions)
    logits = one_hot_logits(predictions, 4)
    for classes in ("present", "all"):
        expected = ref.mean_jaccard_loss(labels, predictions, 4, classes=classes)
        np.testing.assert_allclose(float(LovaszSoftmaxLoss(classes=classes)(labels, logits)), expected, **TOL)
        assert 0.2 < expected < 0.9
    perfect = one_hot_logits(np.where(labels == IGNORE_INDEX, 0, labels), 4)
    for per_image in (False, True):
        assert abs(float(LovaszSoftmaxLoss(per_image=per_image)(labels, perfect))) < 1e-6


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [1, 3]])
def test_lovasz_matches_the_loop_reference(per_image, classes):
    for seed in (6, 7):
        labels, logits = random_case(seed)
        for class_weights in (None, [0.5, 2.0, 1.0, 3.0]):
            kwargs = dict(classes=classes, per_image=per_image, class_weights=class_weights)
            expected = ref.reference_lovasz_softmax(labels, logits, **kwargs)
            np.testing.assert_allclose(float(LovaszSoftmaxLoss(**kwargs)(labels, logits)), expected, **TOL)


def test_lovasz_with_tied_errors_matches_the_reference():
    # Ties (equal logits) do not change the Lovász extension's value.
    rng = np.random.default_rng(8)
    logits = rng.integers(-1, 2, size=(2, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 4, 4))
    labels[0, 0] = IGNORE_INDEX
    for per_image in (False, True):
        expected = ref.reference_lovasz_softmax(labels, logits, per_image=per_image)
        np.testing.assert_allclose(float(LovaszSoftmaxLoss(per_image=per_image)(labels, logits)), expected, **TOL)


# Shared properties of the new losses

NEW_LOSSES = [
    DiceLoss(),
    DiceLoss(per_image=True, classes="present", smooth=0.0),
    FocalLoss(),
    FocalLoss(gamma=0.5, alpha=[0.25, 0.5, 1.0, 2.0]),
    LovaszSoftmaxLoss(),
    LovaszSoftmaxLoss(per_image=True, classes="all"),
    CombinedLoss([(SegmentationCrossEntropy(), 1.0), (DiceLoss(), 0.5), (LovaszSoftmaxLoss(), 0.25)]),
]
LOSS_IDS = ["dice", "dice_per_image", "focal", "focal_alpha", "lovasz", "lovasz_per_image", "combined"]


def value_and_gradient(loss, labels, logits):
    logits = tf.convert_to_tensor(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = loss(labels, logits)
    return float(value), tape.gradient(value, logits).numpy()


@pytest.mark.parametrize("loss", NEW_LOSSES, ids=LOSS_IDS)
def test_ignored_pixels_change_nothing(loss):
    labels, logits = random_case(9)
    ignored = labels == IGNORE_INDEX
    other = logits.copy()
    other[ignored] = np.random.default_rng(9).normal(scale=10.0, size=other[ignored].shape)
    value, gradient = value_and_gradient(loss, labels, logits)
    other_value, other_gradient = value_and_gradient(loss, labels, other)
    np.testing.assert_allclose(other_value, value, rtol=1e-6)
    assert np.all(gradient[ignored] == 0) and np.all(other_gradient[ignored] == 0)
    np.testing.assert_allclose(other_gradient, gradient, rtol=1e-5, atol=1e-8)
    assert np.abs(gradient[~ignored]).max() > 0


@pytest.mark.parametrize(
    "loss",
    [SegmentationCrossEntropy(), OhemCrossEntropy(min_kept=10), *NEW_LOSSES],
    ids=["cross_entropy", "ohem", *LOSS_IDS],
)
def test_nan_and_inf_logits_at_ignored_pixels_reach_neither_loss_nor_gradient(loss):
    labels, logits = random_case(12)
    ignored = np.argwhere(labels == IGNORE_INDEX)
    assert len(ignored) >= 3
    poisoned = logits.copy()
    for (b, y, x), value in zip(ignored[:3], (np.nan, np.inf, -np.inf)):
        poisoned[b, y, x, 1] = value
    value, gradient = value_and_gradient(loss, labels, logits)
    poisoned_value, poisoned_gradient = value_and_gradient(loss, labels, poisoned)
    assert poisoned_value == value
    np.testing.assert_array_equal(poisoned_gradient, gradient)


@pytest.mark.parametrize("loss", NEW_LOSSES, ids=LOSS_IDS)
def test_gradients_are_finite_at_extreme_logits_and_all_ignored(loss):
    labels, logits = random_case(10)
    confident = one_hot_logits(np.where(labels == IGNORE_INDEX, 0, labels), 4, scale=200.0)
    wrong = one_hot_logits((np.where(labels == IGNORE_INDEX, 0, labels) + 1) % 4, 4, scale=200.0)
    for case in (confident, wrong, 0 * logits):
        value, gradient = value_and_gradient(loss, labels, case)
        assert np.isfinite(value) and np.isfinite(gradient).all()
    value, gradient = value_and_gradient(loss, np.full_like(labels, IGNORE_INDEX), logits)
    assert value == 0.0 and np.all(gradient == 0)


@pytest.mark.parametrize("loss", NEW_LOSSES, ids=LOSS_IDS)
def test_small_logits_are_upsampled_to_the_labels(loss):
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(2, 4, 4, 4)).astype("float32")
    labels = rng.integers(0, 4, size=(2, 13, 13))
    up = np.asarray(resize_bilinear(logits, (13, 13), align_corners=True))
    np.testing.assert_allclose(float(loss(labels[..., None], logits)), float(loss(labels, up)), rtol=1e-5)


@pytest.mark.parametrize("loss", NEW_LOSSES, ids=LOSS_IDS)
def test_xla_compiled_equals_eager(loss):
    labels, logits = random_case(12)
    compiled = tf.function(lambda y, p: loss(y, p), jit_compile=True)
    np.testing.assert_allclose(float(compiled(labels, logits)), float(loss(labels, logits)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", NEW_LOSSES, ids=LOSS_IDS)
def test_config_round_trips(loss):
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    labels, logits = random_case(13)
    np.testing.assert_allclose(float(restored(labels, logits)), float(loss(labels, logits)), rtol=1e-6)


def test_configs_hold_every_argument():
    dice = DiceLoss(ignore_index=0, class_weights=[1, 2], smooth=0.5, per_image=True, classes=[1], name="d")
    assert {k: dice.get_config()[k] for k in ("ignore_index", "class_weights", "smooth", "per_image", "classes", "name")} == {
        "ignore_index": 0, "class_weights": [1.0, 2.0], "smooth": 0.5, "per_image": True, "classes": [1], "name": "d"}
    focal = FocalLoss(ignore_index=7, gamma=1.5, alpha=(0.25, 0.75), class_weights=[2, 1])
    assert {k: focal.get_config()[k] for k in ("ignore_index", "gamma", "alpha", "class_weights")} == {
        "ignore_index": 7, "gamma": 1.5, "alpha": [0.25, 0.75], "class_weights": [2.0, 1.0]}
    lovasz = LovaszSoftmaxLoss(ignore_index=3, classes="all", per_image=True, class_weights=[1, 0])
    assert {k: lovasz.get_config()[k] for k in ("ignore_index", "classes", "per_image", "class_weights")} == {
        "ignore_index": 3, "classes": "all", "per_image": True, "class_weights": [1.0, 0.0]}
    for loss in (DiceLoss(), FocalLoss(), LovaszSoftmaxLoss()):
        assert loss.ignore_index == IGNORE_INDEX == 255


def test_combined_loss_is_the_weighted_sum():
    labels, logits = random_case(14)
    ce, dice, lovasz = SegmentationCrossEntropy(), DiceLoss(), LovaszSoftmaxLoss()
    expected = float(ce(labels, logits)) + 0.5 * float(dice(labels, logits)) + float(lovasz(labels, logits))
    combined = CombinedLoss([(ce, 1.0), (dice, 0.5), lovasz])
    np.testing.assert_allclose(float(combined(labels, logits)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(combine((ce, 1.0), (dice, 0.5), lovasz)(labels, logits)), expected, rtol=1e-6)
    assert combined.ignore_index == 255
    assert CombinedLoss([DiceLoss(ignore_index=0), FocalLoss(ignore_index=0)]).ignore_index == 0
    assert CombinedLoss([keras.losses.MeanSquaredError()]).ignore_index == IGNORE_INDEX


def test_combined_loss_averages_an_unreduced_keras_term():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (2, 6, 5)).astype("int32")
    logits = rng.normal(size=(2, 6, 5, 4)).astype("float32")
    ce = SegmentationCrossEntropy()
    keras_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    expected = float(ce(labels, logits)) + 0.5 * float(np.mean(keras_ce(labels, logits)))
    combined = CombinedLoss([ce, (keras_ce, 0.5)])
    np.testing.assert_allclose(float(combined(labels, logits)), expected, rtol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=-1.0)
    with pytest.raises(ValueError, match="classes"):
        DiceLoss(classes="some")
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes=[1, 1])
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=-0.25)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[0.25, float("nan")])
    with pytest.raises(ValueError, match="class_weights"):
        LovaszSoftmaxLoss(class_weights=[1.0, -1.0])
    labels, logits = random_case(15)
    for loss in (DiceLoss(class_weights=[1, 2]), FocalLoss(alpha=[1, 2, 3]), LovaszSoftmaxLoss(class_weights=[1])):
        with pytest.raises(ValueError, match="4 classes"):
            loss(labels, logits)
    with pytest.raises(ValueError, match="4 classes"):
        LovaszSoftmaxLoss(classes=[4])(labels, logits)
    with pytest.raises(ValueError, match="different labels"):
        CombinedLoss([DiceLoss(ignore_index=0), FocalLoss()])
    with pytest.raises(TypeError, match="keras.losses.Loss"):
        CombinedLoss([("dice", 1.0)])
    with pytest.raises(ValueError, match="at least one"):
        CombinedLoss([])


def test_combined_loss_arguments_are_checked_when_it_is_made():
    ce, dice = SegmentationCrossEntropy(), DiceLoss()
    # The weights as a second list were taken as the name, and every weight as 1.
    with pytest.raises(TypeError, match=r"`name` must be a string; received \[1.0, 0.5\]. "
                                        r"The weights go with their losses"):
        CombinedLoss([ce, dice], [1.0, 0.5])
    with pytest.raises(TypeError, match="`losses` must be a list"):
        CombinedLoss(ce)
    with pytest.raises(TypeError, match="received 3 items"):
        CombinedLoss([(ce, 1.0, 0.5)])
    for weight in ("x", None, True, float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="weight of SegmentationCrossEntropy must be a "
                                             f"finite number of at least 0; received {weight!r}"):
            CombinedLoss([(ce, weight)])
    assert CombinedLoss([(ce, np.float32(0.5)), (dice, 0)]).terms == [(ce, 0.5), (dice, 0.0)]
    combined = CombinedLoss([(ce, 1.0), (dice, 0.5)])  # registered: deserialized by its name
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(combined))
    assert [(type(loss), weight) for loss, weight in restored.terms] == [
        (SegmentationCrossEntropy, 1.0), (DiceLoss, 0.5)]


# In the task


def test_fit_a_tiny_alignseg_with_combined_losses_and_save(tmp_path):
    from alignseg_keras.testing import tiny_alignseg

    rng = np.random.default_rng(16)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    masks = (images[..., 0] // 86).astype("int32")
    masks[:, :2] = IGNORE_INDEX
    model = tiny_alignseg(3, seed=0)
    loss = CombinedLoss([(FocalLoss(), 1.0), (DiceLoss(), 0.5), (LovaszSoftmaxLoss(per_image=True), 0.5)])
    model.compile(loss=loss, aux_loss_weight=0.4, jit_compile=False)  # XLA: test_xla_compiled_equals_eager
    # The compiled loss is applied to both heads.
    x, y = images[:2], masks[:2]
    main, aux = model(x, training=False), 0.5 * model(x, training=False)
    expected = float(loss(y, main)) + 0.4 * float(loss(y, aux))
    value = model.compute_loss(x=x, y=y, y_pred={"logits": main, "aux_logits": aux})
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored.loss, CombinedLoss)
    assert restored.loss.get_config() == loss.get_config()
    assert restored.aux_loss_weight == 0.4


JAX_CHECK = r"""
import jax, numpy as np, keras
assert keras.backend.backend() == "jax"
from alignseg_keras import losses
from alignseg_keras.testing import loss_references as ref
rng = np.random.default_rng(0)
logits = (2.0 * rng.normal(size=(2, 5, 6, 4))).astype("float32")
labels = rng.integers(0, 4, size=(2, 5, 6))
labels[rng.random(labels.shape) < 0.2] = 255
cases = [
    (losses.DiceLoss(per_image=True), ref.reference_dice(labels, logits, per_image=True)),
    (losses.FocalLoss(alpha=[0.25, 0.5, 1.0, 2.0]), ref.reference_focal(labels, logits, alpha=[0.25, 0.5, 1.0, 2.0])),
    (losses.LovaszSoftmaxLoss(), ref.reference_lovasz_softmax(labels, logits)),
    (losses.LovaszSoftmaxLoss(per_image=True, classes="all"),
     ref.reference_lovasz_softmax(labels, logits, per_image=True, classes="all")),
]
for loss, expected in cases:
    value, grad = jax.jit(jax.value_and_grad(lambda p: loss(labels, p)))(logits)
    np.testing.assert_allclose(float(value), expected, rtol=2e-5, atol=2e-6)
    assert np.isfinite(np.asarray(grad)).all() and np.all(np.asarray(grad)[labels == 255] == 0)
print("jax ok")
"""


def test_losses_under_jax_jit_match_the_references():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", JAX_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "jax ok" in result.stdout, result.stderr[-3000:]


def test_median_frequency_weights_by_hand():
    from alignseg_keras.losses import median_frequency_weights

    # Frequencies 0.5, 0.25, 0.25 (class 3 absent, 255 ignored): median 0.25.
    masks = np.array([[0, 0, 0, 0], [1, 1, 2, 2], [255, 255, 255, 255]])
    weights = median_frequency_weights(masks, 4)
    np.testing.assert_allclose(weights, [0.5**0.5, 1.0, 1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(median_frequency_weights(masks, 4, power=1.0), [0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(median_frequency_weights(masks, 4, power=0.0), [1.0] * 4)
    with pytest.raises(ValueError, match="no pixel"):
        median_frequency_weights(np.full((2, 2), 255), 4)
    with pytest.raises(ValueError, match="integer"):
        median_frequency_weights(np.zeros((2, 2), "float32"), 4)


def test_loss_from_spec():
    from alignseg_keras import losses

    assert isinstance(losses.loss_from_spec("ohem"), losses.OhemCrossEntropy)
    ohem = losses.loss_from_spec("ohem", {"ohem": {"threshold": 0.6, "min_kept": 5}}, ignore_index=7)
    assert (ohem.threshold, ohem.min_kept, ohem.ignore_index) == (0.6, 5, 7)
    combined = losses.loss_from_spec(" ce:1, dice:0.5 ,lovasz:0.25", class_weights=[1.0, 2.0])
    assert isinstance(combined, losses.CombinedLoss)
    config = combined.get_config()
    assert "dice" in str(config).lower() and "lovasz" in str(config).lower()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (2, 4, 4))
    logits = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    expected = (
        losses.SegmentationCrossEntropy(class_weights=[1.0, 2.0])(labels, logits)
        + 0.5 * losses.DiceLoss(class_weights=[1.0, 2.0])(labels, logits)
        + 0.25 * losses.LovaszSoftmaxLoss(class_weights=[1.0, 2.0])(labels, logits)
    )
    np.testing.assert_allclose(float(combined(labels, logits)), float(expected), rtol=1e-6)
    # A single weighted term is a sum of one, so its weight counts.
    half = losses.loss_from_spec("focal:0.5", {"focal": {"gamma": 0.0}})
    np.testing.assert_allclose(
        float(half(labels, logits)), 0.5 * float(losses.SegmentationCrossEntropy()(labels, logits)), rtol=1e-6
    )
    for spec, message in (
        ("", "text like"), ("cross", "Unknown loss"), ("ce,ce:2", "twice"),
        ("dice:x", "not a number"), ("dice:0", "positive"), ("dice:-1", "positive"),
    ):
        with pytest.raises(ValueError, match=message):
            losses.loss_from_spec(spec)
    with pytest.raises(ValueError, match="unknown losses"):
        losses.loss_from_spec("ce", {"bce": {}})
