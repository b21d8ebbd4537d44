import numpy as np

from alignseg_keras.metrics import MeanIoU


def official_cityscapes_iou(labels, predictions, num_classes, ignore=255):
    """The official evaluation's per-class IoU: tp / (tp + fp + fn); NaN if a class never occurs."""
    ious = []
    valid = labels != ignore
    for c in range(num_classes):
        tp = np.sum((labels == c) & (predictions == c) & valid)
        fp = np.sum((labels != c) & (predictions == c) & valid)
        fn = np.sum((labels == c) & (predictions != c) & valid)
        ious.append(np.nan if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return np.array(ious)


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
