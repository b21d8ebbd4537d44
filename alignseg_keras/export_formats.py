"""The export formats of `alignseg_keras.export`, importable without TensorFlow.

The command line builds its parser from them before it knows whether an export
(which needs TensorFlow) will run; `AlignSeg.export` checks its precision here.
"""

import os

from alignseg_keras.atomic import check_writable

EXPORT_FORMATS = ("saved_model", "onnx", "litert")
# The single-file formats and their files' suffixes.
FORMAT_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
FORMAT_NAMES = {"saved_model": "SavedModel", "onnx": "ONNX", "litert": "LiteRT"}


def format_for_path(path):
    """The export format a destination's name implies: by its suffix, in any case (so that
    `export_model` refuses `A.TFLITE` by name instead of writing a folder), else
    "saved_model".

    Example:
    ```python
    format_for_path("alignseg.tflite")  # "litert"
    format_for_path("models/alignseg/1")  # "saved_model"
    ```
    """
    for format, suffix in FORMAT_SUFFIXES.items():
        if str(path).lower().endswith(suffix):
            return format
    return "saved_model"


def check_export_file(path, format):
    """Raises the `ValueError` `export_model` would raise for the destination `path` of
    a single-file `format` (ONNX, LiteRT), at once: a name without the format's suffix
    (in lower case), a folder, a place that cannot be written.

    Example:
    ```python
    check_export_file("alignseg_int8.onnx", "onnx")
    ```
    """
    name = FORMAT_NAMES[format]
    if not str(path).endswith(FORMAT_SUFFIXES[format]):
        raise ValueError(
            f"The {name} export is a single file whose name ends with "
            f"{FORMAT_SUFFIXES[format]} (in lower case); received {str(path)!r}."
        )
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; the {name} export is a file: give a file name.")
    check_writable(path)


def check_export_backend(format, backend):
    """Raises a `ValueError` when `export_model` cannot write `format` on the Keras
    `backend` ("tensorflow", "jax", "torch"), before a model is loaded.

    Every format is written from TensorFlow: the SavedModel's serving functions
    are TensorFlow ops, ONNX goes through tf2onnx and LiteRT through TensorFlow's
    converter. Keras' other routes are not used: torch.onnx cannot export the
    alignment layers' gathers (Keras' torch `take` uses aten::ravel, which has
    no ONNX operator), and jax2onnx (ONNX on JAX) and litert-torch (LiteRT on
    torch) are not tested with AlignSeg.
    """
    if backend == "tensorflow":
        return
    name = FORMAT_NAMES.get(format, format)
    if format == "onnx" and backend == "torch":
        why = ("torch.onnx cannot export the gathers of AlignSeg's alignment layers (Keras' "
               "torch `take` uses aten::ravel, which has no ONNX operator)")
    elif format == "saved_model":
        why = "the serving functions are built with TensorFlow ops"
    else:
        why = (f"this library writes {name} files through TensorFlow (Keras' {backend} route "
               "is not tested with AlignSeg)")
    raise ValueError(
        f"{name} export does not work on the {backend} backend: {why}; it needs "
        f"KERAS_BACKEND=tensorflow (current: {backend!r}). Save a .keras file on {backend} and "
        "export it from a TensorFlow process (KERAS_BACKEND=tensorflow alignseg export ...)."
    )


def check_float32_computation(model, format):
    """Raises a `ValueError` when `model` computes in another dtype than float32 and
    `format` is a single-file format (ONNX, LiteRT); see `check_export_precision`."""
    if format in FORMAT_SUFFIXES:
        other = sorted({layer.compute_dtype for layer in model._flatten_layers()} - {"float32"})
        if other:
            raise ValueError(_precision_message(format, ", ".join(other)))


def check_export_precision(format, precision):
    """Raises `check_float32_computation`'s `ValueError` for a `precision` ("float32",
    "bfloat16") asked of `format`, before a model is loaded.

    Measured with Keras 3.15 (2026-12-06): a mixed_bfloat16 model exported to ONNX
    has bfloat16 and float16 operands in one Sub (ONNX Runtime refuses to load the
    file), and to LiteRT it needs TensorFlow's Flex ops (the plain interpreter
    refuses it); both exports reported success. The SavedModel serves bfloat16.
    Other dtypes were not tried, so they are refused too.
    """
    if format in FORMAT_SUFFIXES and precision != "float32":
        raise ValueError(_precision_message(format, precision))


def _precision_message(format, dtype):
    return (
        f"{format} export takes a model computing in float32; this one computes in {dtype} "
        "(a bfloat16 model gave an ONNX file that ONNX Runtime could not load and a LiteRT "
        "file that LiteRT's interpreter could not run). Export the float32 model "
        "(inference.as_precision(model, \"float32\"); alignseg export without --precision); "
        "ONNX Runtime and LiteRT have their own reduced-precision conversions (docs/serving.md)."
    )
