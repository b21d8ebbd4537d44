"""AlignSeg on the JAX backend: the same outputs as TensorFlow for the same weights.

Keras fixes its backend at import, so this module runs in its own pytest session:

    KERAS_BACKEND=jax python -m pytest tests/test_jax_backend.py

and is skipped in a TensorFlow session. The TensorFlow side runs in
subprocesses (`tests/jax_session/tf_reference.py`): it builds randomised
models, saves them as `.keras` files with their TensorFlow outputs, gradients
and post-training-step weights; here they are loaded on JAX and compared, and
a model trained and saved on JAX is loaded back on TensorFlow.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="JAX session only: run with KERAS_BACKEND=jax (see the module docstring).",
)

from jax_session import cases  # noqa: E402

from alignseg_keras import AlignSeg  # noqa: E402
from alignseg_keras.layers import AlignmentLayer  # noqa: E402

SESSION_DIR = Path(__file__).parent / "jax_session"


def run_helper(script, *args, env=None):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    result = subprocess.run(
        [sys.executable, str(SESSION_DIR / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def assert_close(actual, expected, tolerance=1e-4):
    """Equal within `tolerance`, relative to the largest magnitude of `expected`."""
    expected = np.asarray(expected)
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=tolerance * scale)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tf_reference")
    run_helper("tf_reference.py", "make", str(directory))
    return directory


def reference_file(reference, key):
    return str(reference / cases.FILES[key])


def test_layers_match_tensorflow(reference):
    model = keras.saving.load_model(reference_file(reference, "layers"))
    inputs = dict(np.load(reference_file(reference, "layer_inputs")))
    expected = np.load(reference_file(reference, "layer_outputs"))
    outputs = model.predict(inputs, verbose=0)
    assert sorted(outputs) == sorted(expected.files)
    for name in expected.files:
        assert np.abs(expected[name]).max() > 0, name
        assert_close(outputs[name], expected[name])


@pytest.mark.parametrize("mode", ["standard", "official"])
def test_alignment_gradients_match_tensorflow(reference, mode):
    import jax

    inputs = np.load(reference_file(reference, "layer_inputs"))
    expected = np.load(reference_file(reference, "alignment_gradients"))
    layer = AlignmentLayer(mode)

    def objective(features, offsets):
        return cases.alignment_objective(layer([features, offsets]))

    gradients = jax.jit(jax.grad(objective, argnums=(0, 1)))(inputs["coarse"], inputs["offsets"])
    assert_close(gradients[0], expected[f"{mode}_features"])
    assert_close(gradients[1], expected[f"{mode}_offsets"])
    assert np.abs(np.asarray(gradients[1])).max() > 0


def test_alignseg_outputs_match_tensorflow(reference):
    import jax

    model = keras.saving.load_model(reference_file(reference, "model"))
    assert isinstance(model, AlignSeg)
    expected = np.load(reference_file(reference, "model_outputs"))
    images = cases.images()
    assert_close(model.predict(images, verbose=0), expected["predict"])

    # Training mode as JAX runs it in a train step: a jitted stateless call.
    @jax.jit
    def training_call(trainable, non_trainable, x):
        outputs, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return outputs

    training = training_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        images,
    )
    assert_close(training["logits"], expected["train_logits"])
    assert_close(training["aux_logits"], expected["train_aux_logits"])


def test_training_step_matches_tensorflow_and_saves_for_tensorflow(reference, tmp_path):
    model = keras.saving.load_model(reference_file(reference, "model"))
    cases.compile_for_one_step(model)
    loss = model.train_on_batch(cases.images(), cases.labels())
    expected = np.load(reference_file(reference, "trained_weights"))
    assert_close(loss, expected["loss"])
    weights = cases.weights_by_path(model)
    assert sorted(weights) == sorted(name for name in expected.files if name != "loss")
    for name, value in weights.items():
        assert_close(value, expected[name])

    # The model trained here loads on TensorFlow and predicts the same there.
    model.save(tmp_path / cases.FILES["jax_model"])
    images = cases.images(seed=3)
    np.savez(
        tmp_path / cases.FILES["jax_model_outputs"],
        images=images,
        predict=model.predict(images, verbose=0),
    )
    run_helper("tf_reference.py", "check", str(tmp_path))


def test_fit_with_default_compile_then_save_and_load(tmp_path):
    keras.utils.set_random_seed(1)
    model = cases.tiny_alignseg()
    before = cases.weights_by_path(model)
    model.compile()
    images, labels = cases.images(), cases.labels()
    history = model.fit(images, labels, batch_size=1, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    after = cases.weights_by_path(model)
    assert any(not np.array_equal(before[name], after[name]) for name in before)
    metrics = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert np.isfinite(metrics["loss"])

    path = tmp_path / "trained.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    weights_path = tmp_path / "trained.weights.h5"
    model.save_weights(weights_path)
    fresh = cases.tiny_alignseg()
    fresh.load_weights(weights_path)
    np.testing.assert_array_equal(fresh.predict(images, verbose=0), model.predict(images, verbose=0))


def test_mixed_bfloat16_inference_is_close_to_float32(reference):
    model = keras.saving.load_model(reference_file(reference, "model"))
    images = cases.images()
    expected = model.predict(images, verbose=0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = AlignSeg.from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(model.get_weights())
    result = mixed.predict(images, verbose=0)
    assert result.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: a few logits move by a tenth of the
    # logit range, the typical one by much less and the classes rarely change.
    scale = np.abs(expected).max()
    assert np.mean(np.abs(result - expected)) < 0.02 * scale
    assert np.mean(result.argmax(-1) == expected.argmax(-1)) > 0.9


def test_data_parallel_step_equals_single_device_step():
    output = run_helper(
        "data_parallel.py",
        env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["max_weight_difference"] <= 1e-4 * max(result["weight_scale"], 1.0)
    assert abs(result["parallel_loss"] - result["single_loss"]) <= 1e-4 * abs(result["single_loss"])


def test_alignseg_works_without_tensorflow():
    output = run_helper("without_tensorflow.py", env={"KERAS_BACKEND": "jax"})
    assert output.strip().splitlines()[-1] == "ok"
