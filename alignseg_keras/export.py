"""Exporting AlignSeg for serving: TF SavedModel (TF Serving), ONNX and LiteRT.

`export_saved_model` writes a SavedModel with Keras' `ExportArchive`. Its
`serving_default` signature takes

    images: uint8 [batch, height, width, 3], RGB, any height and width

and returns

    labels:        int32   [batch, height, width]   (argmax class)
    probabilities: float32 [batch, height, width, num_classes]  (softmax)

Normalisation and padding happen inside the model, so clients send raw
pixels. Being uint8, they are always finite: a NaN or infinite pixel cannot
reach the model (float images are refused by the signature's dtype). An empty
batch or 0-sized images return empty `labels` and `probabilities` of the
matching shape, without running the network. The SavedModel is self-contained: TF Serving, `saved_model_cli` or
`tf.saved_model.load` use it without Keras or alignseg_keras.

ONNX and LiteRT go through Keras' own `model.export(format=...)` and keep the
model's plain interface (float images in, logits out); they need extra
packages (`tf2onnx` for ONNX; LiteRT uses TensorFlow's converter).

Example:
```python
model = keras.saving.load_model("alignseg.keras")
export_saved_model(model, "serving/alignseg/1")
```
"""

import importlib.util

import keras
import tensorflow as tf

from alignseg_keras.export_formats import EXPORT_FORMATS
from alignseg_keras.inference import output_classes

SERVING_INPUT = "images"

# Packages each format needs beyond TensorFlow and Keras, and its file suffix.
FORMAT_REQUIREMENTS = {"saved_model": (), "onnx": ("tf2onnx", "onnx"), "litert": ()}
FORMAT_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}


def serving_signature():
    """The input of the serving function: uint8 RGB images of any size."""
    return tf.TensorSpec([None, None, None, 3], tf.uint8, name=SERVING_INPUT)


def serving_function(model):
    """The function behind `serving_default`: images to labels and probabilities.

    Args:
        model: a Keras model from RGB images (0..255) to logits
            `(B, H, W, num_classes)` at the input size, such as `AlignSeg`.

    Returns:
        A Python function of a uint8 `images` tensor returning
        `{"labels": int32 (B, H, W), "probabilities": float32 (B, H, W, C)}`;
        empty for an empty batch or 0-sized images.
    """

    num_classes = output_classes(model)

    def serve(images):
        # The signature declares the shape, but TensorFlow only checks the
        # dtype when called; this names a wrong rank or channel count clearly.
        images = tf.ensure_shape(images, [None, None, None, 3], name=SERVING_INPUT)
        logits = tf.cond(
            tf.size(images) > 0,
            lambda: tf.cast(model(images, training=False), tf.float32),
            lambda: tf.zeros(tf.concat([tf.shape(images)[:3], [num_classes]], 0)),
        )
        return {
            "labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    return serve


def export_saved_model(model, export_dir):
    """Writes a TF Serving SavedModel with the `serving_default` signature above.

    Args:
        model: an `AlignSeg` (or any model from images to logits at input size).
        export_dir: folder to write; for TF Serving, a numbered version folder
            such as `models/alignseg/1`.

    Example:
    ```python
    export_saved_model(model, "models/alignseg/1")
    served = tf.saved_model.load("models/alignseg/1").signatures["serving_default"]
    labels = served(images=tf.zeros((1, 512, 1024, 3), tf.uint8))["labels"]
    ```
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_saved_model builds its serving function with TensorFlow ops and needs "
            f"KERAS_BACKEND=tensorflow (current: {keras.backend.backend()!r}); save a .keras "
            "file on this backend and export it from a TensorFlow process."
        )
    archive = keras.export.ExportArchive()
    # The endpoint tracks the variables it uses. `archive.track(model)` would
    # also store the model's Keras variables a second time (Keras 3.15),
    # doubling the size of the SavedModel.
    archive.add_endpoint(
        "serving_default", serving_function(model), input_signature=[serving_signature()]
    )
    archive.write_out(str(export_dir), verbose=False)


def missing_requirements(format):
    """Names of the packages `format` needs that are not installed."""
    if format not in FORMAT_REQUIREMENTS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {EXPORT_FORMATS}.")
    return [name for name in FORMAT_REQUIREMENTS[format] if importlib.util.find_spec(name) is None]


def export_model(model, path, format="saved_model"):
    """Exports `model` in `format`.

    `"saved_model"` writes the serving SavedModel (`export_saved_model`) into
    the folder `path`. `"onnx"` (file `*.onnx`) and `"litert"` (file
    `*.tflite`) use Keras' `model.export`, whose artifacts take float32
    images `[batch, height, width, 3]` (0..255) and return logits.

    Args:
        model: a Keras model from images to logits.
        path: destination folder (SavedModel) or file (ONNX, LiteRT).
        format: one of `"saved_model"`, `"onnx"`, `"litert"`.

    Raises:
        ValueError: unknown format, a package the format needs is missing, or
            a format this backend cannot export (SavedModel needs TensorFlow;
            ONNX does not work on torch).

    Example:
    ```python
    export_model(model, "alignseg.onnx", format="onnx")
    ```
    """
    missing = missing_requirements(format)
    if format == "onnx" and keras.backend.backend() == "torch":
        raise ValueError(
            "ONNX export does not work on the torch backend: torch.onnx cannot export the "
            "gathers of AlignSeg's alignment layers (Keras' torch `take` uses aten::ravel, "
            "which has no ONNX operator). Save a .keras file on torch and export it from a "
            "TensorFlow process (KERAS_BACKEND=tensorflow alignseg export ...)."
        )
    if missing:
        raise ValueError(
            f"Exporting to {format} needs the packages {', '.join(missing)}; "
            f"install them with `pip install {' '.join(missing)}`."
        )
    if format == "saved_model":
        export_saved_model(model, path)
        return
    if not str(path).endswith(FORMAT_SUFFIXES[format]):
        raise ValueError(
            f"A {format} export is a single file whose name ends with "
            f"{FORMAT_SUFFIXES[format]}; received {str(path)!r}."
        )
    input_signature = [
        keras.InputSpec(shape=(None, None, None, 3), dtype="float32", name=SERVING_INPUT)
    ]
    model.export(str(path), format=format, input_signature=input_signature, verbose=False)
