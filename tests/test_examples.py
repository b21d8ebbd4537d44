"""examples/train_cityscapes.py runs as written, on a tiny Cityscapes tree.

What a test must change is changed on the module it loads, nothing in the example's
code path: the encoder (its ImageNet weights would be downloaded), the steps and the
crop (769x769 crops of batch 8 would take minutes here)."""

import functools
import importlib.util
import pathlib

import numpy as np
from PIL import Image

from alignseg_keras import AlignSeg
from alignseg_keras import data
from alignseg_keras.optimizers import optimizer_step
from alignseg_keras.testing.models import tiny_alignseg

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_cityscapes.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("train_cityscapes", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_cityscapes(root, count=2, size=(32, 64)):
    rng = np.random.default_rng(0)
    for index in range(count):
        stem = f"aachen_{index:06d}_000019"
        image = root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png"
        label = root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"
        for path in (image, label):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.integers(0, 34, size).astype(np.uint8)).save(label)


def _tiny_alignseg(built, num_classes, backbone_weights):
    assert backbone_weights == "imagenet"  # what the example asks for
    built.append(tiny_alignseg(num_classes))
    return built[-1]


def test_the_cityscapes_example_trains_and_saves_a_preset(tmp_path, monkeypatch):
    example = _load_example()
    _write_cityscapes(tmp_path / "cityscapes")
    built = []
    monkeypatch.setattr(example, "AlignSeg", functools.partial(_tiny_alignseg, built))
    monkeypatch.setattr(example, "CITYSCAPES_STEPS", 2)
    monkeypatch.setattr(example, "STEPS_PER_EPOCH", 1)
    monkeypatch.setattr(example.data, "training_pipeline", functools.partial(
        data.training_pipeline, crop_size=(32, 32), batch_size=2))
    example.main(str(tmp_path / "cityscapes"), str(tmp_path / "run"))
    [trained] = built
    assert optimizer_step(trained) == 2
    loaded = AlignSeg.from_preset(str(tmp_path / "run" / "preset"))
    image = np.zeros((1, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(loaded.predict(image, verbose=0),
                                  trained.predict(image, verbose=0))
    assert loaded.predict(image, verbose=0).shape == (1, 32, 32, len(data.CITYSCAPES_CLASSES))
