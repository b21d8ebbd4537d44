"""The exported SavedModel serves on its own: TensorFlow only, no alignseg_keras."""

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import urllib.error
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alignseg_keras.export import SIGNATURES
from alignseg_keras.export import decode_images
from alignseg_keras.export import export_saved_model
from alignseg_keras.testing import tiny_alignseg


# Loads the SavedModel in a process where importing alignseg_keras fails, and
# saves what `serving_default` returns for each input batch.
SERVE_WITHOUT_ALIGNSEG = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockAlignSeg(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "alignseg_keras":
                raise ImportError(f"{name} must not be needed to serve the SavedModel")
            return None

    sys.meta_path.insert(0, BlockAlignSeg())
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, outputs_path = sys.argv[1:]
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    inputs = np.load(inputs_path)
    results = {}
    for key in inputs.files:
        for name, value in serve(images=tf.constant(inputs[key])).items():
            results[f"{key}/{name}"] = value.numpy()
    assert not any(name.startswith("alignseg_keras") for name in sys.modules)
    np.savez(outputs_path, **results)
    """
)


@pytest.fixture(scope="module")
def model():
    return tiny_alignseg(num_classes=3)


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("serving") / "alignseg" / "1"
    export_saved_model(model, path)
    return path


@pytest.fixture(scope="module")
def serving_default(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures["serving_default"]


def test_signature_takes_uint8_images_and_returns_labels_and_probabilities(serving_default):
    (_, inputs) = serving_default.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8
    assert inputs["images"].shape.as_list() == [None, None, None, 3]
    outputs = serving_default.structured_outputs
    assert outputs["labels"].dtype == tf.int32
    assert outputs["labels"].shape.as_list() == [None, None, None]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, None, None, 3]


def test_saved_model_stores_every_weight_once(model, export_dir):
    stored = tf.train.list_variables(str(export_dir / "variables" / "variables"))
    values = sum(int(np.prod(shape)) for name, shape in stored if "VARIABLE_VALUE" in name)
    assert values == model.count_params()


def test_serves_in_a_process_without_alignseg_keras(model, export_dir, tmp_path):
    rng = np.random.default_rng(0)
    inputs = {
        "small": rng.integers(0, 256, (2, 37, 50, 3)).astype("uint8"),
        "wide": rng.integers(0, 256, (1, 64, 96, 3)).astype("uint8"),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = tmp_path / "serve.py"
    script.write_text(SERVE_WITHOUT_ALIGNSEG)
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, str(script), str(export_dir), str(tmp_path / "inputs.npz"),
         str(tmp_path / "outputs.npz")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    served = np.load(tmp_path / "outputs.npz")
    for key, images in inputs.items():
        expected = np.asarray(keras.ops.softmax(model(images), axis=-1))
        probabilities = served[f"{key}/probabilities"]
        labels = served[f"{key}/labels"]
        assert probabilities.shape == images.shape[:3] + (3,)
        assert labels.shape == images.shape[:3] and labels.dtype == np.int32
        # The SavedModel's graph and the eager call pick different float32 kernels;
        # logit differences of ~1e-5 (a few ulps of logits of magnitude ~30, summed
        # over the network) move a probability near a tie by up to ~1e-4.
        np.testing.assert_allclose(probabilities, expected, atol=3e-4)
        np.testing.assert_array_equal(labels, probabilities.argmax(-1))
        # Labels agree with Keras wherever the top two classes are not a near tie.
        top_two = np.sort(expected, axis=-1)[..., -2:]
        decided = top_two[..., 1] - top_two[..., 0] > 1e-3
        np.testing.assert_array_equal(labels[decided], expected.argmax(-1)[decided])


@pytest.mark.parametrize(
    "images, message",
    [
        (tf.zeros((1, 32, 32, 3), tf.float32), "expected to be a uint8 tensor"),
        # Non-finite pixels cannot reach the model: only uint8 images are served.
        (tf.fill((1, 8, 8, 3), float("nan")), "expected to be a uint8 tensor"),
        (tf.zeros((32, 32, 3), tf.uint8), r"\[32,32,3\] is not compatible with expected shape"),
        (tf.zeros((1, 32, 32, 4), tf.uint8), r"\[1,32,32,4\] is not compatible"),
    ],
)
def test_wrong_inputs_are_rejected_with_a_clear_message(serving_default, images, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving_default(images=images)


@pytest.mark.parametrize("shape", [(0, 32, 32, 3), (1, 0, 0, 3), (2, 5, 0, 3)])
def test_empty_batches_and_images_give_empty_outputs(serving_default, shape):
    outputs = serving_default(images=tf.zeros(shape, tf.uint8))
    assert outputs["labels"].shape == shape[:3]
    assert outputs["probabilities"].shape == shape[:3] + (3,)


def test_saved_model_cli_shows_the_signature(export_dir):
    saved_model_cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(saved_model_cli):
        pytest.skip("saved_model_cli is not installed beside this Python")
    completed = subprocess.run(
        [saved_model_cli, "show", "--dir", str(export_dir), "--tag_set", "serve",
         "--signature_def", "serving_default"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "inputs['images'] tensor_info:\n      dtype: DT_UINT8" in completed.stdout
    assert "outputs['labels'] tensor_info:\n      dtype: DT_INT32" in completed.stdout
    assert "Method name is: tensorflow/serving/predict" in completed.stdout


def test_rest_request_body_matches_the_signature(serving_default):
    # The body documented in docs/serving.md: {"instances": [image, ...]}.
    body = json.loads(json.dumps({"signature_name": "serving_default",
                                  "instances": np.zeros((2, 8, 12, 3), "uint8").tolist()}))
    images = tf.constant(body["instances"], tf.uint8)
    outputs = serving_default(images=images)
    assert outputs["labels"].shape == (2, 8, 12)


# === Image files: the `encoded` signatures, through TF Serving's gRPC and REST APIs ===

ROOT = Path(__file__).resolve().parents[1]


def _load_serving_client():
    spec = importlib.util.spec_from_file_location(
        "serving_client", ROOT / "examples" / "serving_client.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serving_client = _load_serving_client()


def encode(image, format="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def emulator():
    """`tests/tf_serving_emulator.py`; needs tensorflow-serving-api (`make test` installs it)."""
    pytest.importorskip("tensorflow_serving", reason="needs tensorflow-serving-api")
    import tf_serving_emulator

    return tf_serving_emulator


@pytest.fixture(scope="module")
def signatures(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (2, 29, 41, 3)).astype("uint8")


def test_the_export_has_four_signatures_for_pixels_and_files(signatures):
    assert set(signatures) == set(SIGNATURES)
    for name, (input_name, outputs) in SIGNATURES.items():
        (_, inputs) = signatures[name].structured_input_signature
        assert list(inputs) == [input_name]
        expected = tf.string if input_name == "encoded_images" else tf.uint8
        assert inputs[input_name].dtype == expected
        assert set(signatures[name].structured_outputs) == set(outputs)


def test_encoded_files_give_the_labels_of_their_pixels(signatures, scenes):
    # PNG is lossless, so the graph's decoding must give exactly Pillow's pixels,
    # and the labels those of the pixel signature (the same graph function).
    files = [encode(image) for image in scenes]
    pixels = signatures["labels"](images=tf.constant(scenes))["labels"].numpy()
    from_files = signatures["encoded_labels"](encoded_images=tf.constant(files))
    np.testing.assert_array_equal(from_files["labels"].numpy(), pixels)
    both = signatures["encoded"](encoded_images=tf.constant(files))
    np.testing.assert_array_equal(both["labels"].numpy(), pixels)
    expected = signatures["serving_default"](images=tf.constant(scenes))["probabilities"]
    np.testing.assert_array_equal(both["probabilities"].numpy(), expected.numpy())
    np.testing.assert_array_equal(decode_images(tf.constant(files)).numpy(), scenes)


def test_grey_rgba_and_jpeg_files_become_rgb(scenes):
    image = scenes[0]
    grey = image[..., 0]
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 77, "uint8")], -1)
    jpeg = encode(image, "JPEG")
    decoded = decode_images(tf.constant([encode(grey), encode(rgba)])).numpy()
    np.testing.assert_array_equal(decoded[0], np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(decoded[1], image)
    # JPEG is lossy: TensorFlow's own JPEG decoder is the reference for its pixels.
    np.testing.assert_array_equal(
        decode_images(tf.constant([jpeg])).numpy()[0], tf.io.decode_jpeg(jpeg, channels=3).numpy()
    )


def _png_header(width, height):
    """The first 33 bytes of a PNG file: its signature and IHDR chunk (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(
        ">I", zlib.crc32(chunk)
    )


@pytest.mark.parametrize(
    "files, message",
    [
        (lambda s: [encode(s[0]), encode(s[0][:20])], "must share a height and width"),
        (lambda s: [b"GIF89a" + bytes(40)], "neither a PNG nor a JPEG"),
        (lambda s: [b""], "neither a PNG nor a JPEG"),
        # Cut short within the header: other ops failed, with the file's bytes in their
        # message (a UnicodeDecodeError in Python) or about list shapes.
        *[(lambda s, n=n: [encode(s[0])[:n]], "An encoded PNG file is cut short: shorter than "
           "its 24-byte header") for n in (8, 12, 16, 18, 23)],
        # A header that claims 10000 x 10000 pixels is refused before decoding.
        (lambda s: [_png_header(10000, 10000)], "more than 67108864 pixels; it was not decoded"),
        # Files of 36 million pixels each: 72 million in the request (a decompression bomb
        # of many files; the limit is 8192 x 8192 = 67108864 pixels, 32 images of 1024x2048).
        (lambda s: [_png_header(6000, 6000)] * 2,
         "of one request hold more than 67108864 pixels together; nothing was decoded"),
    ],
)
def test_wrong_files_are_refused_with_a_clear_message(signatures, scenes, files, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signatures["encoded_labels"](encoded_images=tf.constant(files(scenes), tf.string))


def test_an_empty_request_of_files_gives_empty_outputs(signatures):
    outputs = signatures["encoded"](encoded_images=tf.constant([], tf.string))
    assert outputs["labels"].shape == (0, 0, 0)
    assert outputs["probabilities"].shape == (0, 0, 0, 3)


def test_grpc_clients_get_the_labels_of_files_and_of_pixels(
    emulator, export_dir, signatures, scenes
):
    import grpc
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    expected = signatures["labels"](images=tf.constant(scenes))["labels"].numpy()
    with emulator.grpc_server(export_dir) as target:
        labels = serving_client.predict_grpc([encode(image) for image in scenes], target)
        np.testing.assert_array_equal(labels, expected)
        # The uint8 tensor signature with the labels only (the docs' output_filter).
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "alignseg"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(scenes))
        request.output_filter.append("labels")
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            reply = stub.Predict(request, timeout=60.0)
            assert list(reply.outputs) == ["labels"]
            assert reply.model_spec.signature_name == "serving_default"
            np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["labels"]), expected)
            request.model_spec.signature_name = "encoded_labels"
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=60.0)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rest_clients_get_labels_and_probabilities(emulator, export_dir, signatures, scenes):
    image = scenes[0]
    expected = signatures["serving_default"](images=tf.constant(image[None]))
    labels = expected["labels"].numpy()[0]
    with emulator.rest_server(export_dir) as url:
        only_labels = serving_client.predict_rest(encode(image), url)
        assert set(only_labels) == {"labels"}
        np.testing.assert_array_equal(only_labels["labels"], labels)
        both = serving_client.predict_rest(encode(image), url, signature_name="encoded")
        np.testing.assert_array_equal(both["labels"], labels)
        # JSON carries float32 probabilities as decimal numbers; float32 round-trips.
        np.testing.assert_array_equal(both["probabilities"], expected["probabilities"].numpy()[0])
        for name in ("labels", "serving_default"):
            body = serving_client.rest_pixels_body(image, signature_name=name)
            np.testing.assert_array_equal(serving_client.post_rest(body, url)["labels"], labels)
        with pytest.raises(urllib.error.HTTPError, match="400"):
            serving_client.post_rest(serving_client.rest_body(b"not an image"), url)


def test_the_emulator_reads_json_bodies_as_tf_serving_does(emulator, export_dir, signatures, scenes):
    # tensorflow_serving/util/json_tensor.cc: an object under "inputs", or rows that are
    # objects, name the inputs (for one input too); uint8 takes integers unchecked, which
    # TensorFlow casts (300 -> 44, -1 -> 255). The emulator answered 400 to all three.
    image = scenes[0]
    labels = signatures["labels"](images=tf.constant(image[None]))["labels"].numpy()
    pixels = image.tolist()
    bodies = [{"signature_name": "labels", "inputs": [pixels]},
              {"signature_name": "labels", "inputs": {"images": [pixels]}},
              {"signature_name": "labels", "instances": [{"images": pixels}]}]
    predictions = [emulator.rest_predict(emulator.SavedModelSignatures(export_dir), body)
                   for body in bodies]
    for reply in predictions[:2]:
        np.testing.assert_array_equal(reply["outputs"], labels)
    np.testing.assert_array_equal(predictions[2]["predictions"], labels)
    wrapped = image.astype(np.int64)
    wrapped[0, 0] = [300, -1, 128]
    reply = emulator.rest_predict(emulator.SavedModelSignatures(export_dir),
                                  {"signature_name": "labels", "inputs": [wrapped.tolist()]})
    as_tf_serving = wrapped.astype("uint8")  # [44, 255, 128]
    assert as_tf_serving[0, 0].tolist() == [44, 255, 128]
    expected = signatures["labels"](images=tf.constant(as_tf_serving[None]))["labels"].numpy()
    np.testing.assert_array_equal(reply["outputs"], expected)
    with pytest.raises(ValueError, match="not of expected type: uint8"):
        emulator.rest_predict(emulator.SavedModelSignatures(export_dir),
                              {"signature_name": "labels", "inputs": [np.asarray(image, float).tolist()]})


def test_docs_show_the_tested_client_as_it_is():
    client = (ROOT / "examples" / "serving_client.py").read_text()
    assert client in (ROOT / "docs" / "serving.md").read_text()
