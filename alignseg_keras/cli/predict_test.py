import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from alignseg_keras.cli import main
from alignseg_keras.datasets_info import LABEL_ID_TO_TRAIN_ID
from alignseg_keras.models.alignseg import OFFSET_MODULES
from alignseg_keras.testing import read_only_folder
from alignseg_keras.testing.spies import record_predicted_models
from alignseg_keras.testing import tiny_alignseg
from alignseg_keras.visualize import cityscapes_palette
from alignseg_keras.visualize import load_image
from alignseg_keras.visualize import save_png


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = tiny_alignseg(num_classes=19)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("first", (40, 56, 3)), ("second", (33, 47, 3))):
        path = tmp_path / "in" / f"{name}.png"
        save_png(path, rng.integers(0, 256, shape).astype("uint8"))
        paths.append(str(path))
    return paths


def test_predict_writes_pictures_and_reports_unreadable_images(
    model_path, images, tmp_path, capsys
):
    broken = tmp_path / "in" / "broken.png"
    broken.write_text("not a png")
    output = tmp_path / "out"
    code = main(["predict", images[0], str(broken), images[1], str(tmp_path / "missing.jpg"),
                 "--model", model_path, "--output", str(output), "--label-ids", "--offsets"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.jpg" in err and "2 of 4 images failed" in err
    for name, size in (("first", (40, 56)), ("second", (33, 47))):
        colors = load_image(output / f"{name}_color.png")
        assert colors.shape == size + (3,)
        # Every pixel has one of the 19 class colors.
        palette = {tuple(color) for color in cityscapes_palette()}
        assert {tuple(c) for c in colors.reshape(-1, 3)} <= palette
        assert load_image(output / f"{name}_overlay.png").shape == size + (3,)
        label_ids = np.asarray(load_image(output / f"{name}_labelIds.png"))[..., 0]
        assert (LABEL_ID_TO_TRAIN_ID[label_ids] != 255).all()
        for module in OFFSET_MODULES:
            assert (output / f"{name}_{module}.png").exists()
    assert not (output / "broken_color.png").exists()


def cityscapes_predictions(folder, image_name):
    """The files cityscapesScripts' evaluation takes as the prediction of `image_name`
    (`evalPixelLevelSemanticLabeling.getPrediction`: every file under the folder,
    walked recursively, matching "{city}_{sequence}_{frame}*.png"; more than one is
    an error, "Found multiple predictions for ground truth")."""
    import fnmatch

    city, sequence, frame = image_name.split("_")[:3]
    pattern = f"{city}_{sequence}_{frame}*.png"
    return [os.path.join(root, name) for root, _, names in os.walk(folder)
            for name in fnmatch.filter(names, pattern)]


def test_a_benchmark_folder_holds_one_prediction_per_image(model_path, tmp_path, capsys):
    rng = np.random.default_rng(1)
    names = ["frankfurt_000000_000294_leftImg8bit", "lindau_000001_000019_leftImg8bit"]
    images = []
    for name in names:
        images.append(str(tmp_path / "in" / f"{name}.png"))
        save_png(images[-1], rng.integers(0, 256, (32, 64, 3)).astype("uint8"))
    with_pictures, label_ids_only = tmp_path / "pictures", tmp_path / "results"
    assert main(["predict", *images, "--model", model_path, "--output", str(with_pictures),
                 "--label-ids"]) == 0
    assert len(cityscapes_predictions(with_pictures, names[0])) == 3  # refused by the script
    assert main(["predict", *images, "--model", model_path, "--output", str(label_ids_only),
                 "--label-ids", "--no-pictures"]) == 0
    for name in names:
        (found,) = cityscapes_predictions(label_ids_only, name)
        assert found.endswith(f"{name}_labelIds.png")
        np.testing.assert_array_equal(load_image(found),
                                      load_image(with_pictures / f"{name}_labelIds.png"))
    capsys.readouterr()
    assert main(["predict", *images, "--model", model_path, "--output", str(tmp_path / "none"),
                 "--no-pictures"]) == 2
    assert "--no-pictures leaves nothing to write" in capsys.readouterr().err


def test_predict_without_pictures_needs_no_palette_for_the_classes(images, tmp_path, capsys):
    path = tmp_path / "wide.keras"
    tiny_alignseg(num_classes=25).save(path)
    argv = ["predict", images[0], "--model", str(path), "--palette", "cityscapes", "--offsets"]
    assert main([*argv, "--output", str(tmp_path / "pictures")]) == 2
    assert "The cityscapes palette has 19 colors, too few for 25" in capsys.readouterr().err
    output = tmp_path / "offsets"
    assert main([*argv, "--output", str(output), "--no-pictures"]) == 0
    written = sorted(name.name for name in output.iterdir())
    assert written and not any(n.endswith(("_color.png", "_overlay.png")) for n in written)


def test_predict_with_sliding_windows_scales_and_flip(model_path, images, tmp_path):
    output = tmp_path / "out"
    code = main(["predict", *images, "--model", model_path, "--output", str(output),
                 "--sliding", "32", "--scales", "0.75", "1.0", "--flip", "--palette", "ade20k"])
    assert code == 0
    colors = load_image(output / "second_color.png")
    assert colors.shape == (33, 47, 3)
    assert not (output / "second_labelIds.png").exists()


def test_predict_never_writes_over_its_input_images(model_path, tmp_path, capsys):
    # `--output` the images' own folder: a.png's overlay replaced the photo a_overlay.png,
    # which was then predicted; a second run over dir/*.png took the first's pictures in.
    rng = np.random.default_rng(1)
    for name in ("a", "a_overlay"):
        save_png(tmp_path / f"{name}.png", rng.integers(0, 256, (32, 40, 3)).astype("uint8"))
    photo = (tmp_path / "a_overlay.png").read_bytes()
    code = main(["predict", str(tmp_path / "a.png"), str(tmp_path / "a_overlay.png"),
                 "--model", model_path, "--output", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"The overlay picture of {tmp_path / 'a.png'} would replace the input image" in err
    assert "Nothing was written" in err
    assert (tmp_path / "a_overlay.png").read_bytes() == photo
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_overlay.png"]
    assert main(["predict", str(tmp_path / "a.png"), "--model", model_path,
                 "--output", str(tmp_path / "." / "")]) == 0  # beside its image: allowed


def test_predict_refuses_images_whose_pictures_would_collide(tmp_path, capsys):
    code = main(["predict", "a/scene.png", "b/scene.png", "--model", "unused.keras",
                 "--output", str(tmp_path)])
    assert code == 2
    assert "same name 'scene'" in capsys.readouterr().err


def test_one_image_named_twice_is_predicted_once(model_path, images, tmp_path, capsys):
    # Overlapping globs (`in/*.png in/first.png`) refused the whole run as a collision.
    same = os.path.join(os.path.dirname(images[0]), ".", os.path.basename(images[0]))
    assert main(["predict", *images, same, "--model", model_path,
                 "--output", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.count("first_color.png") == 1


def huge_png(path, width=20000, height=20000):
    """A valid grayscale PNG of `width` x `height` zero pixels, a few hundred kB on disk."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, rows = zlib.compressobj(9), b"\0" * ((width + 1) * 1000)
    data = b"".join(compressor.compress(rows) for _ in range(height // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))


def test_predict_refuses_a_huge_image_names_it_and_goes_on(model_path, images, tmp_path, capsys):
    huge = tmp_path / "in" / "huge.png"
    huge_png(huge)
    output = tmp_path / "out"
    code = main(["predict", images[0], str(huge), images[1], "--model", model_path,
                 "--output", str(output)])
    assert code == 1
    err = capsys.readouterr().err
    assert "huge.png' has 400,000,000 pixels, more than the limit of" in err
    assert "1 of 3 images failed" in err
    assert (output / "first_color.png").exists() and (output / "second_color.png").exists()


def test_predict_output_must_be_a_writable_folder(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["predict", "x.png", "--model", "unused.keras", "--output", str(a_file)]) == 2
    assert f"--output {a_file} is a file, not a folder" in capsys.readouterr().err
    with read_only_folder(tmp_path / "read_only") as folder:
        code = main(["predict", "x.png", "--model", "unused.keras",
                     "--output", str(folder / "out")])
    assert code == 2
    assert f"--output {folder / 'out'} cannot be written" in capsys.readouterr().err


# Creates the file argv[1] once imported, then waits for the file argv[2], so that both runs
# write at the same time.
CONCURRENT_RUN = (
    "import os, sys, time\n"
    "from alignseg_keras.cli import main\n"
    "open(sys.argv[1], 'w').close()\n"
    "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


def test_concurrent_predict_runs_never_tear_pictures(model_path, tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for index in range(8):
        paths.append(str(tmp_path / "in" / f"scene{index}.png"))
        save_png(paths[-1], rng.integers(0, 256, (48, 64, 3)).astype("uint8"))
    other = tmp_path / "other.keras"
    tiny_alignseg(num_classes=19, seed=1).save(other)
    flags = ["--label-ids", "--offsets"]
    for name, model in (("a", model_path), ("b", str(other))):  # each run alone
        assert main(["predict", *paths, "--model", model, "--output", str(tmp_path / name),
                     *flags]) == 0
    start = str(tmp_path / "start")
    runs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, f"{start}.{index}", start,
                          "predict", *paths, "--model", model, "--output",
                          str(tmp_path / "both"), *flags],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        for index, model in enumerate((model_path, str(other)))
    ]
    deadline = time.time() + 300
    while not all(os.path.exists(f"{start}.{index}") for index in range(len(runs))):
        assert time.time() < deadline and all(run.poll() is None for run in runs)
        time.sleep(0.05)
    open(start, "w").close()
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read().decode()[-3000:]
    names = sorted(os.listdir(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "both")) == names  # no temporary file left
    assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "b" / n).read_bytes()
               for n in names)
    for name in names:
        written = (tmp_path / "both" / name).read_bytes()
        assert written in ((tmp_path / "a" / name).read_bytes(),
                           (tmp_path / "b" / name).read_bytes()), name


def test_read_image_checks_the_pixel_limit_before_decoding(images):
    from alignseg_keras.data.decoding import read_image

    with pytest.raises(ValueError, match=r"first.png' has 56x40 = 2,240 pixels, more than the limit"):
        read_image(images[0], max_pixels=2000)
    assert read_image(images[0], max_pixels=2240).shape == (40, 56, 3)


def test_predict_in_bfloat16_writes_the_same_pictures(model_path, images, tmp_path, monkeypatch):
    models = record_predicted_models(monkeypatch)
    outputs = {}
    for precision in ("float32", "bfloat16"):
        outputs[precision] = tmp_path / precision
        code = main(["predict", *images, "--model", model_path, "--output",
                     str(outputs[precision]), "--precision", precision, "--offsets"])
        assert code == 0
    assert [model.dtype_policy.name for model in models] == ["float32"] * 2 + ["mixed_bfloat16"] * 2
    names = sorted(path.name for path in outputs["float32"].iterdir())
    assert sorted(path.name for path in outputs["bfloat16"].iterdir()) == names
    for name in ("first", "second"):
        colors = [np.asarray(load_image(outputs[p] / f"{name}_color.png")) for p in outputs]
        assert (colors[0] == colors[1]).all(-1).mean() > 0.9


def test_predict_refuses_an_unknown_precision(model_path, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", images[0], "--model", model_path, "--output", str(tmp_path),
              "--precision", "float16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "float32" in err and "bfloat16" in err


def test_predict_frozen_writes_the_pictures_of_the_model(model_path, images, tmp_path, monkeypatch):
    from alignseg_keras.frozen_inference import FrozenInferenceModel

    models = record_predicted_models(monkeypatch)
    outputs = {"keras": tmp_path / "keras", "frozen": tmp_path / "frozen"}
    assert main(["predict", *images, "--model", model_path, "--output", str(outputs["keras"]),
                 "--sliding", "32"]) == 0
    assert main(["predict", *images, "--model", model_path, "--output", str(outputs["frozen"]),
                 "--frozen", "--sliding", "32"]) == 0
    assert [type(model) for model in models[2:]] == [FrozenInferenceModel] * 2
    assert models[2] is models[3] and models[2].precision == "float32"
    for name in ("first", "second"):
        colors = [np.asarray(load_image(outputs[p] / f"{name}_color.png")) for p in outputs]
        # Float32 logits equal to rounding (frozen_inference_test): a label may
        # differ only where two classes tie to a few roundings.
        assert (colors[0] == colors[1]).all(-1).mean() > 0.99


def test_predict_frozen_cannot_draw_offsets(model_path, images, tmp_path, capsys):
    code = main(["predict", images[0], "--model", model_path, "--output", str(tmp_path / "out"),
                 "--frozen", "--offsets"])
    assert code != 0
    assert "--offsets draws the offset fields from the Keras model's layers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, message",
    [(["--sliding", "8", "16", "32"], "--sliding takes one tile size or two (height and width); "
      "received 3: 8 16 32."),
     (["--max-pixels", "-1"], "--max-pixels must be 0 (no limit) or more; received -1."),
     # These were refused at every image, after the model had loaded, in the library's words.
     (["--sliding", "16", "--overlap", "1.0"], "--overlap: `overlap` must be in [0, 1); received 1.0."),
     (["--batch-size", "0"], "--batch-size must be a positive int; received 0."),
     (["--scales", "1", "0"], "--scales must be positive finite numbers; received 1.0 0.0."),
     # These went on to fail at every image (exit 1), or in a traceback.
     (["--sliding", "0"], "--sliding takes tile sizes of 1 pixel or more; received 0."),
     (["--sliding", "16", "-5"], "--sliding takes tile sizes of 1 pixel or more; received 16 -5."),
     (["--scales", "inf"], "--scales must be positive finite numbers; received inf."),
     (["--alpha", "3"], "--alpha must be in [0, 1]; received 3.0.")],
)
def test_predict_refuses_bad_options_before_loading_the_model(images, tmp_path, capsys, option, message):
    assert main(["predict", images[0], "--model", str(tmp_path / "never-read.keras"),
                 "--output", str(tmp_path / "out"), *option]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_overlay_colors_every_predicted_class(tmp_path):
    from types import SimpleNamespace

    from alignseg_keras.cli.predict import write_pictures
    from alignseg_keras.visualize import get_palette

    # Class 255 of a 300-class model is a class, not the ignore label.
    labels = np.array([[254, 255, 256]])
    image = np.zeros((1, 3, 3), "uint8")
    palette = get_palette("auto", 300)
    args = SimpleNamespace(output=str(tmp_path), alpha=1.0, label_ids=False, offsets=False,
                           pictures=True)
    write_pictures(None, image, labels, palette, args, "scene")
    np.testing.assert_array_equal(load_image(tmp_path / "scene_overlay.png"), palette[labels])
    np.testing.assert_array_equal(load_image(tmp_path / "scene_color.png"), palette[labels])


def test_an_image_that_fails_in_the_backend_is_skipped_and_the_others_predicted(
        model_path, images, tmp_path, capsys, monkeypatch):
    # Only ValueError, OSError and MemoryError were caught: one image out of GPU memory
    # (the backend's own error) ended the run, the images after it never predicted.
    import tensorflow as tf

    from alignseg_keras import inference

    model_logits = inference._model_logits

    def out_of_memory_for_the_first(model, batch, batch_size):
        if batch.shape[1:3] == (40, 56):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor\n...")
        return model_logits(model, batch, batch_size)

    monkeypatch.setattr(inference, "_model_logits", out_of_memory_for_the_first)
    output = tmp_path / "out"
    assert main(["predict", *images, "--model", model_path, "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert f"skipping {images[0]}: ResourceExhaustedError: OOM when allocating tensor\n" in err
    assert "1 of 2 images failed" in err
    assert (output / "second_color.png").exists() and not (output / "first_color.png").exists()


def test_a_model_with_a_nan_weight_is_refused_not_scored(images, tmp_path, capsys):
    # NaN logits are class 0 at every pixel: pictures of one class, exit 0.
    model = tiny_alignseg(num_classes=3)
    bias = next(w for w in model.weights if w.path == "head/classifier/bias")
    bias.assign(np.array([np.nan, 0.0, 0.0], "float32"))
    path = tmp_path / "diverged.keras"
    model.save(path)
    refusal = (f"{path}: its weight {bias.path} holds NaN or infinity (a diverged training "
               "saved as it was, or a damaged conversion)")
    assert main(["predict", images[0], "--model", str(path), "--output", str(tmp_path / "o")]) == 2
    assert refusal in capsys.readouterr().err
    assert main(["export", str(path), str(tmp_path / "serving" / "1")]) == 2  # served alike
    assert refusal in capsys.readouterr().err and not (tmp_path / "serving" / "1").exists()
    assert main(["info", "--model", str(path), "--size", "64"]) == 0  # described, not refused


def test_a_programming_error_stops_predict_with_its_traceback(model_path, images, tmp_path,
                                                              monkeypatch):
    # Only the errors one image may have alone are skipped; a bug would fail every image.
    from alignseg_keras.cli import predict

    def broken(*args):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(predict, "predict_file", broken)
    with pytest.raises(AttributeError, match="no attribute 'shape'"):
        main(["predict", *images, "--model", model_path, "--output", str(tmp_path / "out")])


def test_offsets_beside_benchmark_label_ids_get_a_note(model_path, images, tmp_path, capsys):
    assert main(["predict", images[0], "--model", model_path, "--output", str(tmp_path / "o"),
                 "--label-ids", "--no-pictures", "--offsets"]) == 0
    assert "--offsets writes NAME_<module>.png beside the label ids" in capsys.readouterr().err
