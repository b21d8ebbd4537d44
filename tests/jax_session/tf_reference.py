"""TensorFlow side of the JAX and torch test sessions, run in a subprocess on TensorFlow.

    python tests/jax_session/tf_reference.py make DIR   # models, inputs, outputs
    python tests/jax_session/tf_reference.py check DIR  # load what JAX or torch saved

`make` saves randomised models as `.keras` files with their TensorFlow outputs,
the AlignmentLayer gradients and the weights after one training step;
`check` loads the model the other backend trained and saved, and compares its
predictions with the ones recorded there (exit status 1 on a mismatch).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cases  # noqa: E402
from alignseg_keras import layers  # noqa: E402


def path(directory, key):
    return os.path.join(directory, cases.FILES[key])


def alignment_gradients(inputs):
    result = {}
    features = tf.constant(inputs["coarse"])
    offsets = tf.constant(inputs["offsets"])
    for mode in ("standard", "official"):
        with tf.GradientTape() as tape:
            tape.watch([features, offsets])
            value = cases.alignment_objective(layers.AlignmentLayer(mode)([features, offsets]))
        feature_grad, offset_grad = tape.gradient(value, [features, offsets])
        result[f"{mode}_features"] = feature_grad.numpy()
        result[f"{mode}_offsets"] = offset_grad.numpy()
    return result


def outputs_of(model, inputs):
    """NumPy outputs of an eager inference call: TensorFlow's kernels without the
    tracing of `predict` (which takes most of a minute for these models)."""
    return keras.tree.map_structure(np.asarray, model(inputs, training=False))


def make(directory):
    inputs = cases.layer_inputs()
    model = cases.layer_model()
    cases.randomize_weights(model)
    model.save(path(directory, "layers"))
    np.savez(path(directory, "layer_inputs"), **inputs)
    np.savez(path(directory, "layer_outputs"), **outputs_of(model, inputs))
    np.savez(path(directory, "alignment_gradients"), **alignment_gradients(inputs))

    alignseg = cases.tiny_alignseg()
    cases.randomize_weights(alignseg)
    alignseg.save(path(directory, "model"))
    saved_weights = alignseg.get_weights()
    images = cases.images()
    predict = outputs_of(alignseg, images)
    # A training-mode call updates the BatchNorm statistics: it comes second,
    # and the training step starts again from the saved weights.
    training = alignseg(images, training=True)
    np.savez(
        path(directory, "model_outputs"),
        predict=predict,
        train_logits=training["logits"].numpy(),
        train_aux_logits=training["aux_logits"].numpy(),
    )
    alignseg.set_weights(saved_weights)
    cases.compile_for_one_step(alignseg, run_eagerly=True)  # no tracing either
    loss = alignseg.train_on_batch(images, cases.labels())
    np.savez(path(directory, "trained_weights"), loss=np.asarray(loss), **cases.weights_by_path(alignseg))


def check(directory):
    model = keras.saving.load_model(path(directory, "backend_model"))
    expected = np.load(path(directory, "backend_model_outputs"))
    error = cases.relative_error(outputs_of(model, expected["images"]), expected["predict"])
    print(f"max difference {error:.3g} of the logit scale")
    return 0 if error <= cases.TOLERANCE else 1


if __name__ == "__main__":
    command, directory = sys.argv[1], sys.argv[2]
    sys.exit(make(directory) if command == "make" else check(directory))
