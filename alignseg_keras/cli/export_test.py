import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.cli import main
from alignseg_keras.testing import read_only_folder
from alignseg_keras.testing import tiny_alignseg


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = tiny_alignseg(num_classes=3)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return str(path)


def test_export_writes_a_serving_saved_model(model_path, tmp_path, capsys):
    export_dir = tmp_path / "alignseg" / "1"
    assert main(["export", model_path, str(export_dir)]) == 0
    assert str(export_dir) in capsys.readouterr().out
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    outputs = serve(images=tf.zeros((1, 24, 40, 3), tf.uint8))
    assert outputs["labels"].shape == (1, 24, 40)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)


def test_export_errors_name_the_file(model_path, tmp_path, capsys):
    assert main(["export", str(tmp_path / "absent.keras"), str(tmp_path / "out")]) == 2
    assert "absent.keras" in capsys.readouterr().err
    assert main(["export", model_path, str(tmp_path / "model"), "--format", "litert"]) == 2
    assert ".tflite" in capsys.readouterr().err
    # ... before the model is loaded (this one does not exist)
    assert main(["export", "absent.keras", str(tmp_path / "model"), "--format", "litert"]) == 2
    assert ".tflite" in capsys.readouterr().err
    # A SavedModel folder named like a file of another format (it was written so).
    assert main(["export", "absent.keras", str(tmp_path / "m.tflite"), "--format",
                 "saved_model"]) == 2
    assert "m.tflite has the extension of LiteRT files (.tflite), but a SavedModel is a folder" \
        in capsys.readouterr().err
    assert not (tmp_path / "m.tflite").exists()



def test_a_file_that_is_no_keras_model_is_named(tmp_path, capsys):
    import keras

    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04 cut short")
    assert main(["export", str(tmp_path / "cut.keras"), str(tmp_path / "out")]) == 2
    assert "cut.keras is not a readable .keras file" in capsys.readouterr().err

    class Unregistered(keras.layers.Layer):
        def call(self, x):
            return x

    inputs = keras.Input((4, 4, 3))
    keras.Model(inputs, Unregistered()(inputs)).save(tmp_path / "custom.keras")
    assert main(["export", str(tmp_path / "custom.keras"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "custom.keras could not be rebuilt" in error and "Unregistered" in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["custom.keras", "cut.keras"]


def test_model_paths_that_hold_no_alignseg_say_what_they_are(tmp_path, capsys):
    # These ended in tracebacks (h5py's OSError, a KeyError, an AttributeError on
    # `num_classes`), in Keras' advice on legacy SavedModels, or, for `evaluate` with a
    # plain Keras model, in a table of numbers and exit status 0.
    import zipfile

    import keras

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"")
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.h5").write_bytes(b"not hdf5")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "a zip, not a model")
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs)).save(tmp_path / "plain.keras")
    cases = {
        "run": "is a training folder: give its model, " + str(tmp_path / "run" / "model.keras"),
        "served": "is a SavedModel (an export, for TF Serving)",
        "empty": "is a folder, neither a .keras file nor a preset directory",
        "weights.h5": "is an HDF5 file: the command line reads .keras files and preset directories",
        "other.keras": "cannot be read as a .keras file (",
        "plain.keras": "holds a Functional, not an AlignSeg",
    }
    for name, message in cases.items():
        path = str(tmp_path / name)
        for command in (["export", path, str(tmp_path / "out")],
                        ["evaluate", "--model", path, "--synthetic-images", "2",
                         "--synthetic-size", "8", "8"]):
            assert main(command) == 2, (name, command[0])
            assert message in capsys.readouterr().err, (name, command[0])

@pytest.mark.parametrize("backend, destination, message", [
    ("jax", "model.onnx", "ONNX export does not work on the jax backend"),
    ("jax", "model.tflite", "LiteRT export does not work on the jax backend"),
    ("jax", "1", "SavedModel export does not work on the jax backend"),
    ("torch", "model.onnx", "torch.onnx cannot export the gathers"),
    ("torch", "model.tflite", "LiteRT export does not work on the torch backend"),
])
def test_export_on_another_backend_is_refused_before_the_model_is_loaded(
        backend, destination, message, tmp_path, capsys, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    assert main(["export", "absent.keras", str(tmp_path / destination)]) == 2
    error = capsys.readouterr().err
    assert message in error and "KERAS_BACKEND=tensorflow alignseg export" in error
    assert not list(tmp_path.iterdir())


def test_export_paths_that_are_files_or_read_only_are_reported(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["export", "unused.keras", str(a_file)]) == 2
    assert f"EXPORT_DIR {a_file} is a file, not a folder" in capsys.readouterr().err
    assert main(["export", "unused.keras", str(tmp_path), "--format", "onnx"]) == 2
    assert f"{tmp_path} is a folder; give a file name" in capsys.readouterr().err
    with read_only_folder(tmp_path / "read_only") as folder:
        assert main(["export", "unused.keras", str(folder / "alignseg" / "1")]) == 2
        assert "cannot be written" in capsys.readouterr().err
        assert main(["export", "unused.keras", str(folder / "m.onnx"), "--format", "onnx"]) == 2
        assert f"the folder of the export file {folder} cannot be written" in capsys.readouterr().err


def test_export_in_bfloat16_writes_a_saved_model_that_runs(model_path, tmp_path, capsys):
    import keras

    from alignseg_keras.inference import predict_whole

    export_dir = tmp_path / "bfloat16" / "1"
    assert main(["export", model_path, str(export_dir), "--precision", "bfloat16"]) == 0
    assert "bfloat16" in capsys.readouterr().out
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (2, 24, 40, 3)).astype("uint8")
    outputs = serve(images=tf.constant(images))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 24, 40, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(outputs["labels"].numpy(), probabilities.argmax(-1))
    reference = predict_whole(keras.saving.load_model(model_path), images)
    assert (probabilities.argmax(-1) == reference.argmax(-1)).mean() > 0.9


def test_export_replaces_an_earlier_saved_model_and_keeps_other_files(model_path, tmp_path, capsys):
    export_dir = tmp_path / "alignseg" / "1"
    assert main(["export", model_path, str(export_dir)]) == 0
    (export_dir / "saved_model.pb").write_bytes(b"an older export")
    assert main(["export", model_path, str(export_dir)]) == 0
    tf.saved_model.load(str(export_dir))  # the new export, whole
    assert sorted(entry.name for entry in export_dir.parent.iterdir()) == ["1"]
    (export_dir / "assets.extra").mkdir()  # TF Serving's warm-up requests, added by hand
    capsys.readouterr()
    assert main(["export", model_path, str(export_dir)]) == 2
    assert (f"EXPORT_DIR {export_dir} holds files that replacing it would delete (assets.extra)"
            in capsys.readouterr().err)
    assert (export_dir / "assets.extra").is_dir()


def test_the_format_follows_the_file_name_and_presets_are_models(tmp_path, monkeypatch):
    # A forgotten --format wrote a SavedModel folder named alignseg.onnx; a preset
    # directory (what `alignseg convert` writes) crashed inside TensorFlow.
    from alignseg_keras import export

    exported = []
    monkeypatch.setattr(export, "export_model", lambda model, path, format, max_pixels:
                        exported.append((type(model).__name__, model.num_classes, format)))
    preset = tmp_path / "preset"
    tiny_alignseg(num_classes=4).save_to_preset(preset)
    for name in ("m.onnx", "m.tflite", "alignseg/1"):
        assert main(["export", str(preset), str(tmp_path / name)]) == 0
    assert exported == [("AlignSeg", 4, "onnx"), ("AlignSeg", 4, "litert"),
                        ("AlignSeg", 4, "saved_model")]


def test_the_request_limit_reaches_the_export(model_path, tmp_path, monkeypatch, capsys):
    from alignseg_keras import export
    from alignseg_keras.image_files import MAX_PIXELS

    limits = []
    monkeypatch.setattr(export, "export_model", lambda model, path, format, max_pixels:
                        limits.append(max_pixels))
    for option, limit in (([], MAX_PIXELS), (["--max-pixels", "0"], None),
                          (["--max-pixels", "100000000"], 100000000)):
        assert main(["export", model_path, str(tmp_path / "1"), *option]) == 0
        assert limits.pop() == limit
    assert main(["export", model_path, str(tmp_path / "1"), "--max-pixels", "-1"]) == 2
    assert "--max-pixels must be 0 (no limit) or more; received -1." in capsys.readouterr().err


def test_a_bfloat16_onnx_or_litert_export_is_refused(model_path, tmp_path, capsys):
    # Both wrote files that reported success and did not run (export_test.py).
    assert main(["export", model_path, str(tmp_path / "m.tflite"), "--precision", "bfloat16"]) == 2
    assert "litert export takes a model computing in float32" in capsys.readouterr().err
    # Refused before the model is loaded: no such file is needed to say so.
    assert main(["export", "absent.keras", str(tmp_path / "m.onnx"), "--precision",
                 "bfloat16"]) == 2
    assert "onnx export takes a model computing in float32" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_the_earlier_export_kept(model_path, tmp_path, capsys,
                                                             monkeypatch):
    # It ended in TensorFlow's traceback of SaveV2 (or tf2onnx's OSError), exit 1.
    import errno

    from alignseg_keras import export

    export_dir = tmp_path / "alignseg" / "1"
    assert main(["export", model_path, str(export_dir)]) == 0
    before = sorted(path.name for path in export_dir.iterdir())

    def disk_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{export_dir}/variables/variables.data; No space left on device")

    archive_class = type(export.keras.export.ExportArchive())  # the backend's subclass
    monkeypatch.setattr(archive_class, "write_out", disk_full)
    capsys.readouterr()
    assert main(["export", model_path, str(export_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"alignseg export: error: the disk holding {export_dir} is full; nothing was "
                     "changed there (an earlier export is as it was). Free some space, or "
                     "export elsewhere.")
    assert sorted(path.name for path in export_dir.iterdir()) == before
    monkeypatch.setattr(export, "export_model",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    assert main(["export", model_path, str(tmp_path / "m.onnx")]) == 2
