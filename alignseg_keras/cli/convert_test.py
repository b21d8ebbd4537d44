import keras
import numpy as np

from alignseg_keras.cli import main
from alignseg_keras.convert import encoder_architecture
from alignseg_keras.convert import export_official_state_dict
from alignseg_keras.testing.checkpoints import assert_exported_equals
from alignseg_keras.testing.checkpoints import imagenet_backbone_state
from alignseg_keras.testing.checkpoints import is_norm_weight
from alignseg_keras.testing.checkpoints import random_state_dict


def test_convert_with_new_classes_writes_a_keras_model_of_the_checkpoint(tmp_path, capsys):
    state = random_state_dict(50, seed=5)
    checkpoint = tmp_path / "official.npz"
    np.savez(checkpoint, **state)
    output = tmp_path / "alignseg.keras"
    arguments = ["convert", str(checkpoint), "--output", str(output), "--num-classes", "5"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "resnet50_deepstem, 5 classes" in out
    # Said in words, not only as "2 weight, 2 bias" among the ignored names.
    assert ("The classifiers head.3 and dsn.3 were not loaded (the checkpoint has 19 classes): "
            "they start freshly initialised") in out
    negative = sum(int((a < 0).sum()) for n, a in state.items() if is_norm_weight(n, a.shape))
    assert f"(gamma = |w| + 1e-05): {negative} negative" in out
    model = keras.saving.load_model(output)
    assert encoder_architecture(model) == "resnet50_deepstem" and model.num_classes == 5
    # The reloaded model still maps to the authors' names: every weight but the
    # two new 1x1 classifiers comes from the checkpoint.
    exported = export_official_state_dict(model)
    assert list(exported) == list(state)
    for name in ("head.3.weight", "dsn.3.weight"):
        assert exported[name].shape == (5, 256, 1, 1)
    kept = [name for name in state if not name.startswith(("head.3.", "dsn.3."))]
    assert_exported_equals(exported, state, kept)


def test_convert_backbone_only_starts_from_an_imagenet_resnet(tmp_path, capsys):
    state = imagenet_backbone_state(50, seed=11)
    checkpoint = tmp_path / "resnet50-imagenet.npz"
    np.savez(checkpoint, **state)
    output = tmp_path / "start.keras"
    arguments = ["convert", str(checkpoint), "--backbone-only", "--output", str(output)]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "ignored 2 (fc.weight, fc.bias)" in out and "resnet50_deepstem, 19 classes" in out
    model = keras.saving.load_model(output)
    np.testing.assert_array_equal(
        np.asarray(model.image_encoder.get_layer("layer4_1_conv3").kernel),
        state["layer4.1.conv3.weight"].transpose(2, 3, 1, 0),
    )
    whole = tmp_path / "whole.npz"
    np.savez(whole, **random_state_dict(50, seed=12))
    assert main(["convert", str(whole), "--backbone-only", "--output", str(output)]) == 2
    assert "whole AlignSeg checkpoint" in capsys.readouterr().err
    assert main(["convert", str(checkpoint), "--output", str(output)]) == 2
    assert "no AlignSeg heads (head.*, dsn.*)" in capsys.readouterr().err


def test_convert_reports_bad_arguments(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert main(["convert", str(missing), "--output", str(tmp_path / "m.keras")]) == 2
    assert "No checkpoint file at" in capsys.readouterr().err
    assert main(["convert", str(missing), "--output", str(tmp_path / "m.h5")]) == 2
    assert "m.h5' ends with .h5, a model file's extension" in capsys.readouterr().err
    output = str(tmp_path / "m.keras")
    assert main(["convert", str(missing), "--output", output, "--num-classes", "0"]) == 2
    assert "--num-classes 0: `num_classes` must be at least 2" in capsys.readouterr().err
    # Refused before the checkpoint is read (it was read first: 191 MB for a ResNet-50).
    assert main(["convert", str(missing), "--output", output, "--num-classes", "1"]) == 2
    assert "--num-classes 1: `num_classes=1`: a softmax" in capsys.readouterr().err
    assert main(["convert", str(missing), "--output", str(tmp_path / "M.KERAS")]) == 2
    assert "ends with .keras in lower case" in capsys.readouterr().err
    # Folders made for the output go again when the checkpoint cannot be read.
    deep = tmp_path / "new" / "sub" / "m.keras"
    assert main(["convert", str(missing), "--output", str(deep)]) == 2
    assert "No checkpoint file at" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
