import errno
import os
import importlib.util
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras import AlignSeg
from alignseg_keras.backbones import CeilModeMaxPooling2D
from alignseg_keras.export import export_model
from alignseg_keras.export import missing_requirements


def tiny_model(**kwargs):
    keras.utils.set_random_seed(0)
    return AlignSeg(
        num_classes=3,
        backbone="resnet18",
        decoder_channels=16,
        context_hidden_channels=32,
        **kwargs,
    )


def random_images(shape):
    return np.random.default_rng(0).integers(0, 256, shape).astype("float32")


def assert_logits_close(actual, expected):
    # Untrained logits reach several hundred; compare relative to their scale.
    np.testing.assert_allclose(actual, expected, atol=1e-5 * np.abs(expected).max())


def test_format_checks_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'torchscript'"):
        export_model(None, tmp_path / "model", format="torchscript")
    with pytest.raises(ValueError, match=r"ends with \.tflite"):
        export_model(None, tmp_path / "model", format="litert")
    assert missing_requirements("saved_model") == []


@pytest.mark.skipif(
    not missing_requirements("onnx"), reason="the ONNX exporter's packages are installed"
)
def test_onnx_without_its_packages_says_what_to_install(tmp_path):
    with pytest.raises(ValueError, match="pip install .*tf2onnx"):
        export_model(None, tmp_path / "model.onnx", format="onnx")


def test_litert_export_matches_the_keras_model(tmp_path):
    model = tiny_model()
    path = tmp_path / "alignseg.tflite"
    export_model(model, path, format="litert")
    images = random_images((2, 40, 52, 3))
    assert_logits_close(litert_logits(path, images), np.asarray(model(images)))
    # The names docs/serving.md gives.
    assert litert_interpreter(path).get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["output_0"]}
    }


def litert_interpreter(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        return tf.lite.Interpreter(model_path=str(path))


def litert_logits(path, images):
    interpreter = litert_interpreter(path)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_litert_export_of_the_deep_stems_pool_needs_no_tensorflow_ops(tmp_path):
    # The official backbone's ceil-mode pool, then a convolution: LiteRT's converter
    # keeps a convolution whose input channels it cannot see as a TensorFlow op
    # (FlexConv2D), which tf.lite.Interpreter cannot run.
    keras.utils.set_random_seed(0)
    images = keras.Input((None, None, 3))
    pooled = CeilModeMaxPooling2D()(keras.layers.ReLU()(images))
    model = keras.Model(images, keras.layers.Conv2D(4, 1)(pooled))
    path = tmp_path / "stem.tflite"
    export_model(model, path, format="litert")
    for shape in ((1, 33, 47, 3), (2, 32, 32, 3)):
        inputs = random_images(shape)
        assert_logits_close(litert_logits(path, inputs), np.asarray(model(inputs)))


onnx_runtime_installed = pytest.mark.skipif(
    bool(missing_requirements("onnx")) or importlib.util.find_spec("onnxruntime") is None,
    reason="ONNX export needs tf2onnx and onnx, and this test onnxruntime "
    "(pip install tf2onnx onnx onnxruntime)",
)


@onnx_runtime_installed
def test_onnx_export_matches_the_keras_model(tmp_path):
    import onnxruntime

    model = tiny_model()
    path = tmp_path / "alignseg.onnx"
    export_model(model, path, format="onnx")
    session = onnxruntime.InferenceSession(str(path))
    images = random_images((2, 40, 52, 3))
    # The names docs/serving.md gives.
    assert [tensor.name for tensor in session.get_inputs()] == ["images"]
    assert [tensor.name for tensor in session.get_outputs()] == ["Identity:0"]
    (logits,) = session.run(None, {"images": images})
    assert_logits_close(logits, np.asarray(model(images)))


def one_convolution_model():
    keras.utils.set_random_seed(0)
    images = keras.Input((None, None, 3))
    return keras.Model(images, keras.layers.Conv2D(2, 3, padding="same")(images))


def test_a_saved_model_folder_appears_only_when_complete(tmp_path, monkeypatch):
    from alignseg_keras.export import export_saved_model

    export_dir = tmp_path / "models" / "1"
    archive_class = type(keras.export.ExportArchive())  # the backend's subclass
    write_out = archive_class.write_out
    seen = []

    def recording_write_out(archive, filepath, **kwargs):
        seen.append(export_dir.exists())
        write_out(archive, filepath, **kwargs)
        seen.append(export_dir.exists())

    monkeypatch.setattr(archive_class, "write_out", recording_write_out)
    model = one_convolution_model()
    export_saved_model(model, export_dir)
    assert seen == [False, False]
    served = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    assert served(images=tf.zeros((1, 8, 8, 3), tf.uint8))["labels"].shape == (1, 8, 8)
    assert [entry.name for entry in export_dir.parent.iterdir()] == ["1"]


def test_a_failed_export_leaves_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"the earlier export")

    def failing_export(model, filepath, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"half an exp")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "export", failing_export)
    with pytest.raises(OSError, match="No space left"):
        export_model(one_convolution_model(), path, format="litert")
    assert path.read_bytes() == b"the earlier export"
    assert [entry.name for entry in tmp_path.iterdir()] == ["model.tflite"]


def test_a_saved_model_folder_with_other_files_is_refused_before_tracing(tmp_path, monkeypatch):
    from alignseg_keras import export

    def never(model):
        raise AssertionError("the model was traced")

    monkeypatch.setattr(export, "model_forward", never)
    (tmp_path / "1" / "assets.extra").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds files that replacing it would delete \(assets.extra\)"):
        export.export_saved_model(one_convolution_model(), tmp_path / "1")
    # A folder of a user's files under a name a SavedModel uses is no earlier export.
    (tmp_path / "site" / "assets").mkdir(parents=True)
    (tmp_path / "site" / "assets" / "logo.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match=r"site holds assets but no saved_model.pb"):
        export.export_saved_model(one_convolution_model(), tmp_path / "site")
    assert (tmp_path / "site" / "assets" / "logo.png").read_bytes() == b"mine"


def refuse_conversion(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the conversion ran")

    monkeypatch.setattr(keras.Model, "export", never)


def test_file_destinations_are_checked_before_the_conversion(tmp_path, monkeypatch):
    refuse_conversion(monkeypatch)
    model = one_convolution_model()
    (tmp_path / "folder.tflite").mkdir()
    with pytest.raises(ValueError, match="folder.tflite is a folder; the LiteRT export is a file"):
        export_model(model, tmp_path / "folder.tflite", format="litert")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode)
                        and os.path.abspath(path) != str(locked))  # root may write anywhere
    with pytest.raises(ValueError, match=f"the folder {locked} is not writable"):
        export_model(model, locked / "new" / "alignseg.tflite", format="litert")
    from alignseg_keras import export

    monkeypatch.setattr(export, "model_forward", lambda model: pytest.fail("traced"))
    with pytest.raises(ValueError, match=f"the folder {locked} is not writable"):
        export.export_saved_model(model, locked / "1")


def test_single_file_exports_of_a_bfloat16_model_are_refused(tmp_path, monkeypatch):
    # Measured with Keras 3.15: the ONNX file did not load in ONNX Runtime, the
    # LiteRT file needed Flex ops; both exports had reported success. A plain
    # Keras model, so that export_model's own check is what refuses.
    refuse_conversion(monkeypatch)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = one_convolution_model()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for format, name in [("litert", "a.tflite"), ("onnx", "a.onnx")]:
        if missing_requirements(format):
            continue
        with pytest.raises(ValueError, match=f"{format} export takes a model computing in "
                                             "float32; this one computes in bfloat16"):
            export_model(model, tmp_path / name, format=format)
    assert list(tmp_path.iterdir()) == []


def test_alignseg_export_traces_the_portable_sampling(tmp_path, monkeypatch):
    # Keras' own model.export(format="litert") traced TensorFlow's fused kernel,
    # which LiteRT's interpreter cannot run (test_litert_export_matches_the_keras_model
    # runs the portable form).
    from alignseg_keras.layers import alignment

    seen, signatures = [], []
    monkeypatch.setattr(keras.Model, "export", lambda model, *args, **kwargs: seen.append(
        (args[1], alignment._portable_sampling_depth > 0)) or signatures.append(args[3]))
    model = tiny_model()
    for format in ("litert", "onnx", "tf_saved_model"):
        model.export(tmp_path / "a", format=format)
    assert seen == [("litert", True), ("onnx", True), ("tf_saved_model", False)]
    # The files' input, as export_model writes them: Keras' ONNX export refused a model
    # loaded and never called ("The model provided has never called") without one.
    for signature in signatures[:2]:
        [spec] = signature
        assert (spec.shape, spec.dtype, spec.name) == ((None, None, None, 3), "float32", "images")
    assert signatures[2] is None
    with pytest.raises(ValueError, match="computes in bfloat16"):
        from alignseg_keras.inference import inference_model

        inference_model(model, "bfloat16").export(tmp_path / "a.tflite", format="litert")


def test_litert_export_of_a_model_of_one_image_size(tmp_path):
    # Traced at its own size with any batch (as encoders of one size need), the context
    # pooling's einsum became a tensor of static shape [-1, 2, 512, 3] in the LiteRT file,
    # which the interpreter refused to load ("BytesRequired number of elements overflowed").
    model = tiny_model(image_shape=(64, 96, 3))
    path = tmp_path / "alignseg.tflite"
    export_model(model, path, format="litert")
    images = random_images((2, 64, 96, 3))
    assert_logits_close(litert_logits(path, images), np.asarray(model(images)))
    (source,) = litert_interpreter(path).get_input_details()
    assert list(source["shape_signature"]) == [-1, 64, 96, 3]


def test_a_model_that_is_not_keras_is_refused_before_anything(tmp_path):
    # A FrozenInferenceModel failed inside autograph (SavedModel) or Keras (ONNX).
    class FrozenInferenceModel:
        pass

    for format, path in (("saved_model", tmp_path / "1"), ("onnx", tmp_path / "m.onnx")):
        with pytest.raises(ValueError, match="Exports take a Keras model; received a "
                                             "FrozenInferenceModel. Export the Keras model"):
            export_model(FrozenInferenceModel(), path, format=format)
    assert list(tmp_path.iterdir()) == []


def test_requests_of_too_many_pixels_are_refused_before_the_network():
    from alignseg_keras.export import serving_function

    model = tiny_model()
    ran = []
    serve = serving_function(model, max_pixels=2 * 8 * 8,
                             forward=lambda images: ran.append(True) or tf.zeros((2, 8, 8, 3)))
    assert serve(tf.zeros((2, 8, 8, 3), tf.uint8))["labels"].shape == (2, 8, 8) and ran
    ran.clear()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"The images of one request hold more than 128 pixels together"):
        serve(tf.zeros((3, 8, 8, 3), tf.uint8))
    assert not ran
    unlimited = serving_function(model, max_pixels=None,
                                 forward=lambda images: tf.zeros((3, 8, 8, 3)))
    assert unlimited(tf.zeros((3, 8, 8, 3), tf.uint8))["labels"].shape == (3, 8, 8)


def test_a_model_with_a_nan_weight_is_not_exported(tmp_path):
    model = tiny_model()
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, "float32"))
    with pytest.raises(ValueError, match=rf"The model {model.name}: its weight "
                                         rf"{model.weights[0].path} holds NaN or infinity"):
        export_model(model, tmp_path / "1")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_request_of_files_to_a_model_of_one_size_gives_empty_outputs():
    # The empty batch of files was (0, 0, 0, 3), which the model's (None, 64, 96, 3) refused.
    from alignseg_keras.export import decode_images
    from alignseg_keras.export import encoded_serving_function

    model = tiny_model(image_shape=(64, 96, 3))
    assert decode_images(tf.constant([], tf.string), image_size=(64, 96)).shape == (0, 64, 96, 3)
    assert decode_images(tf.constant([], tf.string), image_size=(None, 96)).shape == (0, 0, 96, 3)
    outputs = encoded_serving_function(model)(tf.constant([], tf.string))
    assert outputs["labels"].shape == (0, 64, 96)
    assert outputs["probabilities"].shape == (0, 64, 96, 3)


def test_max_pixels_of_zero_or_less_is_refused(tmp_path):
    # The command line's "--max-pixels 0" (no limit) from Python exported a limit of 0
    # pixels, which refused every request.
    for value in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match=r"`max_pixels` must be None \(no limit\) or a positive int"):
            export_model(tiny_model(), tmp_path / "alignseg" / "1", max_pixels=value)
    assert not (tmp_path / "alignseg").exists()
