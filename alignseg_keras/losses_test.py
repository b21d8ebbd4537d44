import numpy as np
import pytest

from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.losses import OhemCrossEntropy
from alignseg_keras.losses import SegmentationCrossEntropy
from alignseg_keras.losses import deep_supervision_loss


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


def test_config_round_trip():
    loss = OhemCrossEntropy(threshold=0.6, min_kept=200000, class_weights=[1.0, 2.0])
    clone = OhemCrossEntropy.from_config(loss.get_config())
    assert (clone.threshold, clone.min_kept, clone.class_weights) == (0.6, 200000, [1.0, 2.0])
