"""TensorFlow's `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`, which docs/inference.md offers to
processes that only infer: the logits it gives, and why training refuses it.

TensorFlow reads the variable once per process, at its first oneDNN convolution, so
the process that sets it is a subprocess.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from alignseg_keras.testing import randomize_statistics
from alignseg_keras.testing import tiny_alignseg

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's oneDNN switch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
from alignseg_keras.testing import randomize_statistics, tiny_alignseg

model = tiny_alignseg(num_classes=4)
randomize_statistics(model, biases=True)
images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
forward = tf.function(lambda x: model(x, training=False))
first = forward(images).numpy()
np.save(sys.argv[1], first)
kernel = next(v for v in model.weights if "kernel" in v.path and len(v.shape) == 4)
kernel.assign(kernel.numpy() * 2.0)
again = forward(images).numpy()
retraced = tf.function(lambda x: model(x, training=False))(images).numpy()
print(json.dumps({"called_again_unchanged": bool(np.array_equal(again, first)),
                  "new_function_changed": not np.array_equal(retraced, first)}))
"""


def test_inference_is_unchanged_and_later_weight_changes_are_ignored(tmp_path):
    logits_file = tmp_path / "logits.npy"
    environment = {**os.environ, "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT, "ONEDNN_VERBOSE": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(logits_file)], env=environment,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    behaviour = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    # oneDNN's log names each primitive it runs. On CPUs without AVX-512 (an AVX2-only AMD
    # EPYC) TensorFlow 2.21 runs its convolutions through Eigen (oneDNN only multiplies
    # matrices for it: `gemm_api`), and the variable then changes nothing.
    onednn_convolutions = any("primitive,exec" in line and ",convolution," in line for line in lines)
    # The reason `fit` refuses the variable (checks.check_weights_may_change): where oneDNN
    # convolves, a function already called keeps its convolutions' first kernels after the
    # weights change.
    assert behaviour == {"called_again_unchanged": onednn_convolutions, "new_function_changed": True}
    # The same model here, without the variable: the same float32 arithmetic.
    model = tiny_alignseg(num_classes=4)
    randomize_statistics(model, biases=True)
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    expected = np.asarray(model.predict_on_batch(images), np.float64)
    logits = np.load(logits_file)
    assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()


OFFSETS_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
from alignseg_keras import visualize
from alignseg_keras.testing import randomize_statistics, tiny_alignseg

sys.path.insert(0, sys.argv[2])
from test_onednn_frozen_weights import offsets_case

model, image = offsets_case()
fields = visualize._offset_fields(model, image[None])
np.savez(sys.argv[1], **{name: np.asarray(field) for name, field in fields.items()})
pictures = visualize.offset_images(model, image)
refused = []
for call in (lambda: model(image[None]), lambda: model(tf.constant(image[None])),
             lambda: model.offset_model()(image[None])):
    try:
        call()
        refused.append("")
    except ValueError as error:
        refused.append(str(error))
traced = tf.function(lambda x: model(x, training=False))(tf.constant(image[None])).shape
print(json.dumps({"pictures": sorted(pictures), "refused": refused, "traced": list(traced)}))
"""


def offsets_case():
    """A tiny AlignSeg whose statistics, biases and offset heads (zero when built) are
    random, and a 45x61 image: the case where eager convolutions under the variable gave
    offsets off by 18-84% of each field's largest value."""
    model = tiny_alignseg(num_classes=3)
    randomize_statistics(model, biases=True)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        if not np.any(keras.ops.convert_to_numpy(weight)):
            weight.assign(rng.normal(0, 0.01, weight.shape))
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3)).astype("float32")
    return model, image


def test_offset_pictures_are_right_and_eager_calls_refused_under_the_variable(tmp_path):
    # `alignseg predict --offsets` sets the variable and drew every alignment picture from
    # wrong offsets (an eager call of the offset model); `model(images)` was wrong alike.
    fields_file = tmp_path / "fields.npz"
    environment = {**os.environ, "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", OFFSETS_SCRIPT, str(fields_file),
                             os.path.dirname(os.path.abspath(__file__))], env=environment,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    behaviour = json.loads(result.stdout.strip().splitlines()[-1])
    assert behaviour["pictures"] == ["align_cm", "align_fa2", "align_fa3", "align_fa4", "align_fa5"]
    for refusal in behaviour["refused"]:  # NumPy, a tensor, the offset model
        assert refusal.startswith("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set: TensorFlow's "
                                  "eager convolutions then reuse the kernels"), behaviour
    assert behaviour["traced"] == [1, 45, 61, 3]  # a compiled call passes
    # Here, without the variable: the offsets of an eager call, the same float32 arithmetic.
    model, image = offsets_case()
    expected = model.offset_model()(image[None], training=False)
    fields = np.load(fields_file)
    assert sorted(fields.files) == sorted(expected)
    for name, field in expected.items():
        field = np.asarray(field, np.float64)
        assert np.abs(fields[name] - field).max() <= 1e-5 * np.abs(field).max(), name
