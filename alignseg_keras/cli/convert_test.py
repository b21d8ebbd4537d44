import keras
import numpy as np

from alignseg_keras.cli import main
from alignseg_keras.convert import export_official_state_dict
from alignseg_keras.convert_test import random_state_dict


def test_convert_with_new_classes_writes_a_keras_model_of_the_checkpoint(tmp_path, capsys):
    state = random_state_dict(50, seed=5)
    checkpoint = tmp_path / "official.npz"
    np.savez(checkpoint, **state)
    output = tmp_path / "alignseg.keras"
    arguments = ["convert", str(checkpoint), "--output", str(output), "--num-classes", "5"]
    assert main(arguments) == 0
    assert "resnet50_deepstem, 5 classes" in capsys.readouterr().out
    model = keras.saving.load_model(output)
    assert model.backbone_name == "resnet50_deepstem" and model.num_classes == 5
    # The reloaded model still maps to the authors' names: every weight but the
    # two new 1x1 classifiers comes from the checkpoint.
    exported = export_official_state_dict(model)
    assert list(exported) == list(state)
    for name in ("head.3.weight", "dsn.3.weight"):
        assert exported[name].shape == (5, 256, 1, 1)
    for name, array in state.items():
        if not name.startswith(("head.3.", "dsn.3.")) and array.ndim:
            np.testing.assert_array_equal(exported[name], array, err_msg=name)


def test_convert_reports_bad_arguments(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert main(["convert", str(missing), "--output", str(tmp_path / "m.keras")]) == 2
    assert "No checkpoint file at" in capsys.readouterr().err
    assert main(["convert", str(missing), "--output", str(tmp_path / "m.h5")]) == 2
    assert "--output must be a .keras file" in capsys.readouterr().err
    output = str(tmp_path / "m.keras")
    assert main(["convert", str(missing), "--output", output, "--num-classes", "0"]) == 2
    assert "--num-classes must be positive" in capsys.readouterr().err
