"""`alignseg convert` writing a preset directory, and `--preset` in predict/evaluate."""

import keras
import numpy as np
import pytest

from alignseg_keras import AlignSeg
from alignseg_keras.cli import main
from alignseg_keras.convert import export_official_state_dict
from alignseg_keras.models.preset_files import is_preset_directory
from alignseg_keras.models.preset_files import load_metadata
from alignseg_keras.testing import tiny_alignseg
from alignseg_keras.visualize import save_png


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An authors'-format checkpoint (.npz) of a random official ResNet-50 model, 3 classes."""
    keras.utils.set_random_seed(3)
    model = AlignSeg.from_preset("alignseg_resnet50_official", num_classes=3)
    path = tmp_path_factory.mktemp("checkpoint") / "official.npz"
    np.savez(path, **export_official_state_dict(model))
    images = np.random.default_rng(0).integers(0, 256, (1, 37, 45, 3)).astype("uint8")
    return str(path), images, model.predict(images, verbose=0)


@pytest.fixture(scope="module")
def preset(checkpoint, tmp_path_factory):
    """The checkpoint converted by `alignseg convert` to a preset directory."""
    output = tmp_path_factory.mktemp("presets") / "official_r50"
    assert main(["convert", checkpoint[0], "--output", str(output)]) == 0
    return output


def test_convert_writes_a_preset_directory_that_loads_with_its_weights(checkpoint, preset):
    _, images, expected = checkpoint
    assert is_preset_directory(preset)
    assert "official.npz" in load_metadata(preset)["description"]
    model = AlignSeg.from_preset(str(preset))
    assert model.num_classes == 3
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-4)


def test_convert_refuses_outputs_a_preset_cannot_replace(checkpoint, tmp_path, capsys):
    path = checkpoint[0]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["convert", path, "--output", str(busy)]) == 2
    assert (f"--output {busy} holds files that replacing it would delete (notes.txt)"
            in capsys.readouterr().err)
    assert (busy / "notes.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("")
    assert main(["convert", path, "--output", str(tmp_path / "a_file")]) == 2
    assert f"--output {tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    assert main(["convert", path, "--output", str(tmp_path / "weights.h5")]) == 2
    assert ("--output '" + str(tmp_path / "weights.h5") + "' ends with .h5, a model file's "
            "extension; a preset is a folder: give a name without it, or a .keras file name"
            in capsys.readouterr().err)


def test_predict_and_evaluate_take_a_preset(tmp_path, capsys):
    preset = tmp_path / "tiny"
    tiny_alignseg(num_classes=3).save_to_preset(preset)
    images = np.random.default_rng(0).integers(0, 256, (1, 37, 45, 3)).astype("uint8")
    picture = tmp_path / "street.png"
    save_png(picture, images[0])
    output = tmp_path / "out"
    assert main(["predict", str(picture), "--preset", str(preset), "--output", str(output)]) == 0
    said = capsys.readouterr()
    assert "street_color.png" in said.out and "without trained weights" not in said.err
    assert (output / "street_color.png").exists()
    # A preset directory has its own classes; --num-classes is for preset names.
    arguments = ["predict", str(picture), "--preset", str(preset), "--num-classes", "5",
                 "--output", str(output)]
    assert main(arguments) == 2
    assert "--num-classes sets the classes of a named --preset" in capsys.readouterr().err
    # The 3-class preset does not fit the 8 synthetic classes: a clear error.
    arguments = ["evaluate", "--preset", str(preset), "--synthetic-images", "8", "--limit", "1"]
    assert main(arguments) == 2
    assert f"the preset {preset} predicts 3 classes" in capsys.readouterr().err


def test_model_and_preset_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "a.png", "--output", "out", "--model", "m.keras", "--preset", "p"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate"])
    assert "one of the arguments --model --preset is required" in capsys.readouterr().err


def test_predicting_with_a_preset_name_warns_of_its_untrained_weights(tmp_path, capsys):
    # A named preset is an architecture: its pictures were written without a word.
    picture = tmp_path / "street.png"
    save_png(picture, np.zeros((32, 32, 3), "uint8"))
    assert main(["predict", str(picture), "--preset", "alignseg_resnet18_small",
                 "--output", str(tmp_path / "out"), "--no-pictures", "--label-ids"]) == 0
    assert ("alignseg predict: warning: the preset alignseg_resnet18_small is an architecture "
            "without trained weights") in capsys.readouterr().err
