"""XLA (`jit_compile=True`) and mixed precision on the TensorFlow backend.

A tiny AlignSeg with random weights (offsets of a few pixels, so alignment is
not trivial) must give the same logits and the same training step with XLA
as without, stay close to float32 under `mixed_float16` and `mixed_bfloat16`,
and trace its predict and train steps once for batches of one shape.
"""

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow XLA and tf.function tracing"
)

from jax_session import cases  # noqa: E402

from alignseg_keras import AlignSeg  # noqa: E402

# Bounds for half precision, relative to the largest float32 logit: the mean
# error (a few logits of a bfloat16 model move by a tenth of the range).
HALF_TOLERANCE = {"mixed_float16": 0.005, "mixed_bfloat16": 0.02}
# Bounds on |loss - float32 loss| / float32 loss of a training step. (The
# weight updates themselves are not compared across precisions: through a deep
# random network the backbone's gradients differ by tens of percent in half
# precision, with or without AlignSeg's layers.)
LOSS_TOLERANCE = {"mixed_float16": 0.01, "mixed_bfloat16": 0.05}


@pytest.fixture(scope="module")
def float32_model():
    model = cases.tiny_alignseg()
    cases.randomize_weights(model)
    return model


def clone(model, policy="float32"):
    """The same model and weights, built under `policy`."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        copy = AlignSeg.from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def count_traces(model, step_name):
    """Wraps `model.<step_name>` to count how often TensorFlow traces it."""
    calls = []
    step = getattr(model, step_name)

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    setattr(model, step_name, counted)
    return calls


def relative_error(actual, expected):
    return float(np.abs(np.asarray(actual) - expected).max() / max(np.abs(expected).max(), 1.0))


def test_xla_predict_matches_graph_and_traces_once(float32_model):
    images = cases.images()
    expected = float32_model.predict(images, verbose=0)
    model = clone(float32_model)
    model.compile(jit_compile=True, metrics=[])
    assert model.jit_compile
    traces = count_traces(model, "predict_step")
    first = model.predict(images, batch_size=1, verbose=0)
    second = model.predict(images[::-1], batch_size=1, verbose=0)
    assert len(traces) == 1
    assert relative_error(first, expected) < 1e-4
    np.testing.assert_allclose(second, first[::-1], rtol=0, atol=1e-5 * np.abs(first).max())


def one_step_update(model, images, labels, epochs=1):
    """The loss of the last step and the flattened update of the trainable weights."""
    before = [np.asarray(w) for w in model.trainable_weights]
    history = model.fit(images, labels, batch_size=len(images), epochs=epochs, verbose=0)
    update = [np.asarray(w) - b for w, b in zip(model.trainable_weights, before)]
    return history.history["loss"][-1], np.concatenate([u.ravel() for u in update])


def assert_same_update(update, expected, tolerance):
    """The two weight updates agree within `tolerance`, relative to their size."""
    assert np.linalg.norm(expected) > 0
    error = np.linalg.norm(update - expected) / np.linalg.norm(expected)
    assert error < tolerance, error


def test_xla_training_step_matches_graph_and_traces_once(float32_model):
    images, labels = cases.images(), cases.labels()
    graph, xla = clone(float32_model), clone(float32_model)
    cases.compile_for_one_step(graph, jit_compile=False)
    cases.compile_for_one_step(xla, jit_compile=True)
    traces = count_traces(xla, "train_step")
    expected_loss, expected = one_step_update(graph, images, labels)
    loss, update = one_step_update(xla, images, labels)
    assert abs(loss - expected_loss) < 1e-4 * expected_loss
    assert_same_update(update, expected, 1e-2)
    # More steps of the same shape, also in a second `fit` call, reuse the trace.
    one_step_update(xla, images, labels, epochs=2)
    assert len(traces) == 1


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_inference_is_close_to_float32(float32_model, policy, jit_compile):
    images = cases.images()
    expected = float32_model.predict(images, verbose=0)
    model = clone(float32_model, policy)
    assert model.get_layer("rcb1a").compute_dtype == policy.split("_")[1]
    model.compile(jit_compile=jit_compile, metrics=[])
    result = model.predict(images, verbose=0)
    assert result.dtype == np.float32
    mean_error = np.mean(np.abs(result - expected)) / np.abs(expected).max()
    assert mean_error < HALF_TOLERANCE[policy], mean_error
    assert np.mean(result.argmax(-1) == expected.argmax(-1)) > 0.9


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_step_follows_float32(float32_model, policy):
    images, labels = cases.images(), cases.labels()
    reference = clone(float32_model)
    cases.compile_for_one_step(reference, jit_compile=False)
    expected_loss, _ = one_step_update(reference, images, labels)

    model = clone(float32_model, policy)
    cases.compile_for_one_step(model, jit_compile=False)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    loss, update = one_step_update(model, images, labels)
    assert abs(loss - expected_loss) < LOSS_TOLERANCE[policy] * expected_loss
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert np.all(np.isfinite(update)) and np.linalg.norm(update) > 0
