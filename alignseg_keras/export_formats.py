"""The export formats of `alignseg_keras.export`, importable without TensorFlow.

The command line builds its parser from them before it knows whether an export
(which needs TensorFlow) will run; `AlignSeg.export` checks its precision here.
"""

EXPORT_FORMATS = ("saved_model", "onnx", "litert")
# The single-file formats and their files' suffixes.
FORMAT_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}


def format_for_path(path):
    """The export format a destination's name implies: by its suffix, else "saved_model".

    Example:
    ```python
    format_for_path("alignseg.tflite")  # "litert"
    format_for_path("models/alignseg/1")  # "saved_model"
    ```
    """
    for format, suffix in FORMAT_SUFFIXES.items():
        if str(path).endswith(suffix):
            return format
    return "saved_model"


def check_float32_computation(model, format):
    """Raises a `ValueError` when `model` computes in another dtype than float32 and
    `format` is a single-file format (ONNX, LiteRT).

    Measured with Keras 3.15 (2026-12-06): a mixed_bfloat16 model exported to ONNX
    has bfloat16 and float16 operands in one Sub (ONNX Runtime refuses to load the
    file), and to LiteRT it needs TensorFlow's Flex ops (the plain interpreter
    refuses it); both exports reported success. The SavedModel serves bfloat16.
    """
    if format not in FORMAT_SUFFIXES:
        return
    other = sorted({layer.compute_dtype for layer in model._flatten_layers()} - {"float32"})
    if other:
        raise ValueError(
            f"{format} export needs a model computing in float32; this one computes in "
            f"{', '.join(other)} (ONNX Runtime cannot load such a file, and LiteRT's "
            "interpreter cannot run it). Export the float32 model (alignseg export without "
            "--precision); ONNX Runtime and LiteRT have their own reduced-precision "
            "conversions (docs/serving.md)."
        )
