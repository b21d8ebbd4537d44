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
from jax_session.cases import relative_error  # noqa: E402

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
    assert model.backbone.get_layer("rcb1a").compute_dtype == policy.split("_")[1]
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


def autodiff_alignment(layer, features, offsets):
    """The same sampling as `AlignmentLayer`, differentiated by TensorFlow itself:
    the reference for the layer's hand-written gradient."""
    import tensorflow as tf

    batch, in_h, in_w, _ = features.shape
    y, x = layer.sampling_positions(tf.shape(features), offsets)
    y = tf.clip_by_value(y, -1.0, float(in_h))
    x = tf.clip_by_value(x, -1.0, float(in_w))
    y0, x0 = tf.floor(y), tf.floor(x)
    output = 0.0
    for row, wy in ((y0, 1.0 - (y - y0)), (y0 + 1.0, y - y0)):
        for col, wx in ((x0, 1.0 - (x - x0)), (x0 + 1.0, x - x0)):
            inside = (row >= 0) & (row < in_h) & (col >= 0) & (col < in_w)
            r = tf.cast(tf.clip_by_value(row, 0, in_h - 1), "int32")
            c = tf.cast(tf.clip_by_value(col, 0, in_w - 1), "int32")
            b = tf.broadcast_to(tf.reshape(tf.range(batch), (-1, 1, 1)), tf.shape(r))
            taps = tf.gather_nd(features, tf.stack([b, r, c], axis=-1))
            output += taps * tf.expand_dims(wy * wx * tf.cast(inside, "float32"), -1)
    return output


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("mode", ["standard", "official"])
@pytest.mark.parametrize("in_size,out_size", [((5, 7), (5, 7)), ((4, 6), (9, 11)), ((3, 3), (8, 8)), ((9, 8), (1, 6))])
def test_alignment_gradients_equal_autodiff(mode, in_size, out_size, jit_compile):
    import tensorflow as tf

    from alignseg_keras.layers import AlignmentLayer

    rng = np.random.default_rng(7)
    features = tf.constant(rng.normal(size=(2, *in_size, 6)).astype("float32"))
    offsets = tf.constant(rng.uniform(-3, 3, size=(2, *out_size, 2)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(2, *out_size, 6)).astype("float32"))
    layer = AlignmentLayer(mode)

    def gradients(function):
        @tf.function(jit_compile=jit_compile)
        def run(f, o):
            with tf.GradientTape() as tape:
                tape.watch([f, o])
                value = tf.reduce_sum(function(f, o) * upstream)
            return tape.gradient(value, [f, o])

        return [g.numpy() for g in run(features, offsets)]

    result = gradients(lambda f, o: layer([f, o]))
    expected = gradients(lambda f, o: autodiff_alignment(layer, f, o))
    for actual, reference in zip(result, expected):
        np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-5)
    assert np.abs(result[1]).max() > 0
