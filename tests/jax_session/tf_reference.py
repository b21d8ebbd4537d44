"""TensorFlow side of the JAX test session, run in a subprocess on TensorFlow.

    python tests/jax_session/tf_reference.py make DIR   # models, inputs, outputs
    python tests/jax_session/tf_reference.py check DIR  # load what JAX saved

`make` saves randomised models as `.keras` files with their TensorFlow outputs,
the AlignmentLayer gradients and the weights after one training step;
`check` loads the model JAX trained and saved, and compares its predictions
with the ones JAX recorded (exit status 1 on a mismatch).
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


def make(directory):
    inputs = cases.layer_inputs()
    model = cases.layer_model()
    cases.randomize_weights(model)
    model.save(path(directory, "layers"))
    np.savez(path(directory, "layer_inputs"), **inputs)
    np.savez(path(directory, "layer_outputs"), **model.predict(inputs, verbose=0))
    np.savez(path(directory, "alignment_gradients"), **alignment_gradients(inputs))

    alignseg = cases.tiny_alignseg()
    cases.randomize_weights(alignseg)
    alignseg.save(path(directory, "model"))
    images = cases.images()
    predict = alignseg.predict(images, verbose=0)
    # A training-mode call updates the BatchNorm statistics: it comes second,
    # and the training step starts again from the saved model.
    training = alignseg(images, training=True)
    np.savez(
        path(directory, "model_outputs"),
        predict=predict,
        train_logits=training["logits"].numpy(),
        train_aux_logits=training["aux_logits"].numpy(),
    )
    alignseg = keras.saving.load_model(path(directory, "model"))
    cases.compile_for_one_step(alignseg)
    loss = alignseg.train_on_batch(images, cases.labels())
    np.savez(path(directory, "trained_weights"), loss=np.asarray(loss), **cases.weights_by_path(alignseg))


def check(directory):
    model = keras.saving.load_model(path(directory, "jax_model"))
    expected = np.load(path(directory, "jax_model_outputs"))
    result = model.predict(expected["images"], verbose=0)
    error = float(np.abs(result - expected["predict"]).max())
    scale = float(np.abs(expected["predict"]).max())
    print(f"max abs difference {error:.3g} (logit scale {scale:.3g})")
    return 0 if error <= 1e-4 * max(scale, 1.0) else 1


if __name__ == "__main__":
    command, directory = sys.argv[1], sys.argv[2]
    sys.exit(make(directory) if command == "make" else check(directory))
