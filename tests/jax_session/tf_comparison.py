"""Comparisons with TensorFlow shared by the JAX and the torch test sessions.

`make_reference` runs `tf_reference.py make` in a TensorFlow subprocess; the
`check_*` functions load what it saved on the backend of this process and
compare within `cases.TOLERANCE`, and `start_tensorflow_check` sends a model
trained here back to a TensorFlow subprocess (`tf_reference.py check`).
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from alignseg_keras import AlignSeg
from jax_session import cases

SESSION_DIR = Path(__file__).parent


def start_helper(script, *args, env=None):
    """Starts `tests/jax_session/<script>` in a subprocess; `finish_helper` waits for it."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    # Files rather than pipes: a process left running in the background does
    # not block on a full pipe.
    output, errors = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [sys.executable, str(SESSION_DIR / script), *args],
        env=environment,
        stdout=output,
        stderr=errors,
        text=True,
    )
    process.outputs = (output, errors)
    return process


def stop_helper(process):
    """Ends a `start_helper` process that is still running (a test failed before waiting)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def finish_helper(process, timeout=900):
    """Waits for a `start_helper` process; returns its stdout, fails on an error."""
    try:
        process.wait(timeout=timeout)
    finally:
        stop_helper(process)
    for stream in process.outputs:
        stream.seek(0)
    stdout, stderr = (stream.read() for stream in process.outputs)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def run_helper(script, *args, env=None):
    """Runs `tests/jax_session/<script>` in a subprocess; returns its stdout, fails on an error."""
    return finish_helper(start_helper(script, *args, env=env))


def assert_close(actual, expected, tolerance=cases.TOLERANCE):
    """Equal within `tolerance`, relative to the largest magnitude of `expected`."""
    error = cases.relative_error(actual, expected)
    assert error <= tolerance, f"max difference {error:.3g} of the scale (bound {tolerance:g})"


def make_reference(directory):
    """The TensorFlow models, inputs and outputs of `tf_reference.py make`, in `directory`."""
    run_helper("tf_reference.py", "make", str(directory))
    return directory


def reference_file(reference, key):
    return str(reference / cases.FILES[key])


def check_layers(reference):
    """Every AlignSeg layer's outputs from the saved layer model equal TensorFlow's."""
    model = keras.saving.load_model(reference_file(reference, "layers"))
    inputs = dict(np.load(reference_file(reference, "layer_inputs")))
    expected = np.load(reference_file(reference, "layer_outputs"))
    outputs = model.predict(inputs, verbose=0)
    assert sorted(outputs) == sorted(expected.files)
    for name in expected.files:
        assert np.abs(expected[name]).max() > 0, name
        assert_close(outputs[name], expected[name])


def check_predict(model, reference):
    """`predict` of `model`, the AlignSeg saved on TensorFlow, equals TensorFlow's; returns
    TensorFlow's outputs (`predict`, `train_logits`, `train_aux_logits`)."""
    assert isinstance(model, AlignSeg)
    expected = np.load(reference_file(reference, "model_outputs"))
    assert_close(model.predict(cases.images(), verbose=0), expected["predict"])
    return expected


def train_one_step(reference):
    """The AlignSeg saved on TensorFlow, loaded here and trained one SGD step (the step
    `tf_reference.py make` took); returns `(model, loss)`."""
    model = keras.saving.load_model(reference_file(reference, "model"))
    cases.compile_for_one_step(model)
    return model, model.train_on_batch(cases.images(), cases.labels())


def check_training_step(reference, model, loss):
    """The loss and every weight after `train_one_step` equal TensorFlow's."""
    expected = np.load(reference_file(reference, "trained_weights"))
    assert_close(loss, expected["loss"])
    weights = cases.weights_by_path(model)
    assert sorted(weights) == sorted(name for name in expected.files if name != "loss")
    for name, value in weights.items():
        assert_close(value, expected[name])


def start_tensorflow_check(model, directory):
    """Saves `model` and its predictions in `directory`, then starts `tf_reference.py check`,
    which loads the file on TensorFlow and compares; `finish_helper` waits for it."""
    model.save(directory / cases.FILES["backend_model"])
    images = cases.images(seed=3)
    np.savez(
        directory / cases.FILES["backend_model_outputs"],
        images=images,
        predict=model.predict(images, verbose=0),
    )
    return start_helper("tf_reference.py", "check", str(directory))


def check_fit_save_and_load(directory):
    """`fit` with the default `compile()` trains; `.keras` and `.weights.h5` files
    saved in `directory` load back with the same predictions."""
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

    path = directory / "trained.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    weights_path = directory / "trained.weights.h5"
    model.save_weights(weights_path)
    fresh = cases.tiny_alignseg()
    fresh.load_weights(weights_path)
    np.testing.assert_array_equal(fresh.predict(images, verbose=0), model.predict(images, verbose=0))


def check_mixed_bfloat16_inference(model):
    """Rebuilt under `mixed_bfloat16`, `model`'s logits stay float32 and close to float32's."""
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


def check_batch_norm_folding(model):
    """`model` with trained-like BatchNormalization statistics predicts the same
    logits folded (`fold_batch_normalization`) as unfolded, to float32 rounding."""
    from alignseg_keras.batch_norm_folding import fold_batch_normalization

    unfolded = AlignSeg.from_config(model.get_config())
    unfolded.set_weights(model.get_weights())
    rng = np.random.default_rng(0)
    for layer in unfolded._flatten_layers(recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.5, channels))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, channels))
    folded = fold_batch_normalization(unfolded)
    assert any(getattr(layer, "folded", False) for layer in folded._flatten_layers(recursive=True))
    images = cases.images()
    expected = unfolded.predict(images, verbose=0)
    # A ResNet-18 and the decoder, about 30 layers of float32 rounding.
    assert np.abs(folded.predict(images, verbose=0) - expected).max() < 1e-4 * np.abs(expected).max()


def start_without_tensorflow(backend):
    """Starts `without_tensorflow.py` on `backend`; `check_without_tensorflow` waits for it."""
    return start_helper("without_tensorflow.py", env={"KERAS_BACKEND": backend})


def check_without_tensorflow(process):
    """The `start_without_tensorflow` process trained, saved and predicted with TensorFlow blocked."""
    assert finish_helper(process).strip().splitlines()[-1] == "ok"
