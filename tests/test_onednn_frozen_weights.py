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
