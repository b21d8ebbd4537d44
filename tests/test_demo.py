"""examples/demo.py without training: its loss weights and its captioned summary picture."""

import importlib.util
import pathlib

import numpy as np
import pytest

from alignseg_keras import data
from alignseg_keras import losses
from alignseg_keras import visualize

DEMO = pathlib.Path(__file__).resolve().parents[1] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_weights_favour_rare_classes(demo):
    # The demo weighs its loss with the library's median-frequency weights.
    assert demo.median_frequency_weights is losses.median_frequency_weights
    _, masks = data.synthetic_scene_arrays(8, (64, 128), seed=0)
    weights = demo.median_frequency_weights(masks, len(data.SYNTHETIC_CLASSES))
    frequency = np.bincount(masks.ravel(), minlength=8) / masks.size
    assert len(weights) == 8 and min(weights) > 0
    # Rarer classes weigh more: the weights sort opposite to the frequencies.
    assert np.argmax(weights) == np.argmin(frequency)
    assert np.all(np.diff(np.asarray(weights)[np.argsort(frequency)]) <= 0)
    # A class absent from the masks keeps weight 1 (not infinity).
    assert demo.median_frequency_weights(np.zeros((2, 4, 4), np.uint8), 3)[1:] == [1.0, 1.0]


def test_summary_panel_has_titles_offsets_and_legend(demo):
    images, masks = data.synthetic_scene_arrays(2, (64, 128), seed=1)
    palette = np.asarray(data.SYNTHETIC_COLORS, np.uint8)
    field = np.zeros((64, 128, 2), np.float32)
    field[..., 1] = 1.0  # every offset points right
    offsets = visualize.flow_to_color(field)
    gap = np.full((64, 4, 3), 255, np.uint8)
    samples = [
        (image, visualize.overlay(image, mask, palette), visualize.overlay(image, mask, palette),
         {"align_fa5": np.concatenate([offsets, gap, offsets], axis=1)})
        for image, mask in zip(images, masks)
    ]
    panel = demo.summary_panel(samples, list(data.SYNTHETIC_CLASSES), palette, "heading")
    assert panel.dtype == np.uint8 and panel.ndim == 3
    # Each sample adds a row of three pictures and a row of two offset fields (+ key),
    # each under its title, and the legend shows every class color.
    assert panel.shape[0] > 4 * 64 and panel.shape[1] >= 3 * 128
    for color in palette:
        assert (panel == color).all(-1).sum() >= 25, color
    assert (panel == offsets[0, 0]).all(-1).sum() >= 4 * 64 * 128


def test_evaluate_prints_iou_boundary_iou_and_the_miou_line_last(demo, capsys):
    from alignseg_keras.testing import tiny_alignseg

    model = tiny_alignseg(num_classes=len(data.SYNTHETIC_CLASSES))
    images, masks = data.synthetic_scene_arrays(2, (64, 128), seed=1)
    predictions, results = demo.evaluate(model, images, masks, list(data.SYNTHETIC_CLASSES))
    assert predictions.shape == masks.shape
    assert set(results) == {"miou", "pole_iou", "boundary_iou"}
    lines = capsys.readouterr().out.strip().splitlines()
    assert "bIoU" in lines[0] and lines[-1] == f"mIoU: {results['miou']:.4f}"
    assert any(line.startswith("pole") for line in lines)


def test_the_console_shows_no_tensorflow_start_up_lines():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--steps" in done.stdout
    # Without the demo's hiding, TensorFlow 2.21 prints "I0000 ... oneDNN custom
    # operations are on" twice at load time, whatever TF_CPP_MIN_LOG_LEVEL says.
    assert done.stderr == "", done.stderr
