"""`alignseg evaluate`'s table, and its numbers against the slow NumPy references."""

import re

import numpy as np
import pytest

from alignseg_keras.cli import build_parser
from alignseg_keras.cli import main
from alignseg_keras.cli.evaluate import format_table
from alignseg_keras.testing import tiny_alignseg
from alignseg_keras.testing.spies import record_predicted_models
from alignseg_keras.testing.metric_references import reference_boundary_iou
from alignseg_keras.testing.metric_references import reference_confusion_counts
from alignseg_keras.testing.metric_references import reference_dice
from alignseg_keras.testing.metric_references import reference_dilation
from alignseg_keras.testing.metric_references import reference_iou

NAN = float("nan")


def test_the_table_without_the_new_columns_keeps_its_shape():
    # examples/demo.py calls format_table(class_names, ious, pixel_accuracy, miou).
    table = format_table(["road", "car"], [0.9, NAN], 0.95, 0.9)
    assert table.splitlines() == [
        "class           IoU",
        "--------------  ------",
        "road            0.9000",
        "car                n/a",
        "--------------  ------",
        "pixel accuracy  0.9500",
        "mIoU: 0.9000",
    ]


def test_the_table_with_boundary_iou_and_dice():
    table = format_table(["road", "car", "traffic light"], [0.9, NAN, 0.25], 0.95, 0.575,
                         boundary_ious=[0.5, NAN, 0.125], mean_dice=0.7, boundary_miou=0.3125)
    assert table.splitlines() == [
        "class           IoU     bIoU",
        "--------------  ------  ------",
        "road            0.9000  0.5000",
        "car                n/a     n/a",
        "traffic light   0.2500  0.1250",
        "--------------  ------  ------",
        "pixel accuracy  0.9500",
        "mean Dice       0.7000",
        "boundary mIoU   0.3125",
        "mIoU: 0.5750",
    ]
    with pytest.raises(ValueError, match="2 boundary IoUs for 3 classes"):
        format_table(["a", "b", "c"], [1, 1, 1], 1.0, 1.0, boundary_ious=[1, 1])


def parse_table(text):
    """Per-class (IoU, bIoU) and the summary values of an evaluate table."""
    lines = text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class")) + 2
    rows, summary = {}, {}
    for line in lines[start:]:
        if line.startswith("---"):
            break
        name, iou, boundary = line.rsplit(None, 2)
        rows[name.strip()] = [NAN if v == "n/a" else float(v) for v in (iou, boundary)]
    for line in lines:
        for key in ("pixel accuracy", "mean Dice", "boundary mIoU", "mIoU:"):
            if line.startswith(key):
                summary[key] = float(line[len(key):])
    return rows, summary


def test_evaluate_prints_boundary_iou_and_dice_that_match_the_references(tmp_path, capsys):
    from alignseg_keras import data
    from alignseg_keras.cli.common import load_dataset
    from alignseg_keras.inference import predict_whole

    classes = list(data.SYNTHETIC_CLASSES)
    model = tiny_alignseg(len(classes), seed=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    arguments = ["evaluate", "--model", path, "--synthetic-images", "8",
                 "--synthetic-size", "48", "64", "--limit", "2"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert output.strip().splitlines()[-1].startswith("mIoU: ")
    rows, summary = parse_table(output)
    assert list(rows) == classes

    # The same images and predictions, scored by the references.
    dataset, _, _ = load_dataset(build_parser().parse_args(arguments), "val")
    labels, predictions = [], []
    for image, mask in dataset.take(2).as_numpy_iterator():
        labels.append(mask)
        predictions.append(predict_whole(model, image).argmax(-1))
    labels, predictions = np.stack(labels), np.stack(predictions)
    n = len(classes)
    assert reference_dilation(48, 64, 0.02) == 2
    ious = reference_iou(labels, predictions, n)
    boundary, _ = reference_boundary_iou(labels, predictions, n, dilation_ratio=0.02)
    tp, fp, fn = reference_confusion_counts(labels, predictions, n)
    printed = np.array(list(rows.values()))
    np.testing.assert_allclose(printed[:, 0], ious, atol=5.1e-5, equal_nan=True)
    np.testing.assert_allclose(printed[:, 1], boundary, atol=5.1e-5, equal_nan=True)
    np.testing.assert_allclose(summary["pixel accuracy"], tp.sum() / (tp.sum() + fn.sum()),
                               atol=5.1e-5)
    np.testing.assert_allclose(summary["mean Dice"], np.nanmean(reference_dice(labels, predictions, n)),
                               atol=5.1e-5)
    np.testing.assert_allclose(summary["boundary mIoU"], np.nanmean(boundary), atol=5.1e-5)
    np.testing.assert_allclose(summary["mIoU:"], np.nanmean(ious), atol=5.1e-5)


def test_evaluate_in_bfloat16_scores_the_bfloat16_model(tmp_path, capsys, monkeypatch):
    from alignseg_keras import data

    path = str(tmp_path / "m.keras")
    tiny_alignseg(len(data.SYNTHETIC_CLASSES), seed=0).save(path)
    models = record_predicted_models(monkeypatch)
    miou = {}
    for precision in ("float32", "bfloat16"):
        assert main(["evaluate", "--model", path, "--synthetic-images", "8",
                     "--synthetic-size", "48", "64", "--limit", "2",
                     "--precision", precision]) == 0
        miou[precision] = parse_table(capsys.readouterr().out)[1]["mIoU:"]
    assert {model.dtype_policy.name for model in models} == {"float32", "mixed_bfloat16"}
    assert abs(miou["float32"] - miou["bfloat16"]) < 0.05


def test_evaluate_frozen_scores_the_frozen_model(tmp_path, capsys, monkeypatch):
    from alignseg_keras import data
    from alignseg_keras.frozen_inference import FrozenInferenceModel

    path = str(tmp_path / "m.keras")
    tiny_alignseg(len(data.SYNTHETIC_CLASSES), seed=0).save(path)
    evaluated = record_predicted_models(monkeypatch)
    tables = {}
    for frozen in ([], ["--frozen"]):
        assert main(["evaluate", "--model", path, "--synthetic-images", "8", "--synthetic-size", "48", "64",
                     "--limit", "2", "--precision", "bfloat16", *frozen]) == 0
        tables[bool(frozen)] = parse_table(capsys.readouterr().out)[1]
    assert isinstance(evaluated[-1], FrozenInferenceModel) and evaluated[-1].precision == "bfloat16"
    assert not isinstance(evaluated[0], FrozenInferenceModel)
    # Both round to bfloat16, at different places (frozen_inference_test).
    assert abs(tables[True]["mIoU:"] - tables[False]["mIoU:"]) < 0.05


def test_evaluate_names_a_bad_file_in_one_line(tmp_path, capsys):
    from PIL import Image

    path = str(tmp_path / "m.keras")
    tiny_alignseg(3, seed=0).save(path)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.full((40, 48), 7, np.uint8)).save(tmp_path / "b_mask.png")
    for name, message in (("a", r"a_mask.png' is 30x48 \(HxW\) but its image '.*a.png' is 40x48."),
                          ("b", r"b_mask.png' contains value\(s\) \[7\] outside \[0, 3\)")):
        arguments = ["evaluate", "--model", path, "--dataset", "files", "--num-classes", "3",
                     "--images", str(tmp_path / f"{name}.png"),
                     "--masks", str(tmp_path / f"{name}_mask.png")]
        assert main(arguments) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and error.startswith("alignseg evaluate: error: ")
        assert re.search(message, error), error


def test_evaluate_refuses_a_limit_below_one(capsys):
    assert main(["evaluate", "--model", "never-read.keras", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_evaluate_with_no_labelled_pixel_fails_instead_of_scoring_nan(tmp_path, capsys):
    # It printed "pixel accuracy 0.0000" and "mIoU: nan" and exited 0.
    from PIL import Image

    path = str(tmp_path / "m.keras")
    tiny_alignseg(3, seed=0).save(path)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(tmp_path / "a_mask.png")
    assert main(["evaluate", "--model", path, "--dataset", "files", "--num-classes", "3",
                 "--images", str(tmp_path / "a.png"), "--masks", str(tmp_path / "a_mask.png")]) == 2
    captured = capsys.readouterr()
    assert "No labelled pixel to score in the val split: every label pixel is the ignore label" in (
        captured.err)
    assert "mIoU" not in captured.out
