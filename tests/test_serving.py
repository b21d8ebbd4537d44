"""The exported SavedModel serves on its own: TensorFlow only, no alignseg_keras."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

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
