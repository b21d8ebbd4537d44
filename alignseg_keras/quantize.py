"""Post-training int8 quantisation of an exported ONNX AlignSeg, with ONNX Runtime.

Works on the `.onnx` file that `export.export_model(model, path, format="onnx")`
writes (float32 images `[batch, height, width, 3]`, 0..255, to logits) and
needs `onnx` and `onnxruntime`, no TensorFlow call (any Keras backend).
"""

import importlib.util
import os

import numpy as np

from alignseg_keras.atomic import atomic_path
from alignseg_keras.checks import check_positive_int
from alignseg_keras.export_formats import check_export_file

# Convolutions hold nearly all of AlignSeg's arithmetic; the alignment layers' sampling
# (offsets, bilinear weights, gathers) stays float32, where an int8 offset would move the
# sampling points by a quantisation step.
QUANTIZED_OPERATORS = ("Conv",)
REQUIREMENTS = ("onnx", "onnxruntime")


class _CalibrationImages:
    """ONNX Runtime's CalibrationDataReader protocol over an array of images."""

    def __init__(self, input_name, images, batch_size):
        self._batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])
        self._input_name = input_name

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def _checked_images(images):
    try:
        images = np.asarray(images)
    except ValueError as error:  # NumPy's "inhomogeneous shape" of a ragged list
        raise ValueError(
            "`calibration_images` must be images of one size, an array [count, height, width, "
            f"3]; received a list that is not one ({error})."
        ) from None
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(
            "`calibration_images` must be a non-empty array of RGB images [count, height, "
            f"width, 3]; received shape {images.shape}."
        )
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise ValueError(f"`calibration_images` must hold numbers 0..255; received dtype {images.dtype}.")
    images = images.astype("float32")
    if not np.isfinite(images).all():
        raise ValueError("`calibration_images` hold NaN or infinite values.")
    _check_pixel_range(images)
    return images


def _check_pixel_range(images):
    """The exported model takes 0..255 pixels and normalises them in its graph:
    calibrating on images of another scale sets every activation range from other
    inputs (0..1 or normalised images: a mean logit error 7x that of 0..255 ones)."""
    smallest, largest = float(images.min()), float(images.max())
    if smallest < 0 or largest > 255:
        raise ValueError(
            f"`calibration_images` must hold pixels 0..255, as the exported model takes; "
            f"received values {smallest:g}..{largest:g} (normalised images? give the images "
            "before normalisation: the model normalises them itself)."
        )
    if largest <= 1.0 or smallest == largest:
        raise ValueError(
            f"`calibration_images` hold only values {smallest:g}..{largest:g}: "
            + ("0..1 images? The exported model takes 0..255 pixels; multiply by 255."
               if smallest != largest else "constant images calibrate no activation range; "
               "give images like those the model will see.")
        )


# Operators of a model quantised in QDQ form already (or in QOperator form).
_QUANTIZATION_OPERATORS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")


def _check_quantisable(model, onnx_path, operators):
    """A float model holding each of `operators`: quantising a quantised file wrote an
    ONNX file ONNX Runtime refuses to load ("two nodes with same node name"), and an
    operator type the graph lacks ("conv" for "Conv") a copy with nothing quantised."""
    present = {node.op_type for node in model.graph.node}
    quantised = sorted(present & set(_QUANTIZATION_OPERATORS))
    if quantised:
        raise ValueError(f"{onnx_path} is quantised already (it holds {', '.join(quantised)}); "
                         "give the float32 export (`export_model(..., format=\"onnx\")`).")
    missing = [operator for operator in operators if operator not in present]
    if missing or not operators:
        raise ValueError(
            f"`operators` {list(operators)} name operator types that {onnx_path} does not hold "
            f"({missing or 'none given'}); its types: {sorted(present)} (the default quantises "
            f"{list(QUANTIZED_OPERATORS)})."
        )


def quantize_onnx_int8(onnx_path, output_path, calibration_images, batch_size=1, operators=QUANTIZED_OPERATORS):
    """Writes an int8 copy of an exported ONNX model, calibrated on `calibration_images`.

    Static post-training quantisation in QDQ form: QuantizeLinear /
    DequantizeLinear pairs around each quantised operator, which ONNX Runtime's
    CPU provider runs as int8 kernels (VNNI or AMX instructions where the CPU
    has them). Weights are int8 per output channel, symmetric; activations uint8
    with the min / max ranges the calibration images produce. Only
    convolutions are quantised by default (see `QUANTIZED_OPERATORS`). The file
    is written atomically.

    Args:
        onnx_path: the float32 `.onnx` file (`export_model(..., format="onnx")`).
        output_path: the int8 `.onnx` file to write.
        calibration_images: array `[count, height, width, 3]`, RGB 0..255, a few
            dozen images like those the model will see (training images).
        batch_size: images per calibration batch.
        operators: ONNX operator types to quantise.

    Returns:
        `output_path`.

    Raises:
        ValueError: a package is missing, the calibration images are not RGB
            image arrays of pixels 0..255 (0..1 and constant images included),
            `batch_size` is not a positive int, or `output_path` is no `.onnx`
            file that can be written, all before the model is read; the model is
            quantised already, or lacks an operator type of `operators`.

    Example:
    ```python
    export_model(model, "alignseg.onnx", format="onnx")
    quantize_onnx_int8("alignseg.onnx", "alignseg_int8.onnx", train_images[:32])
    ```
    """
    missing = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"int8 quantisation needs {', '.join(missing)}; `pip install {' '.join(missing)}`.")
    images = _checked_images(calibration_images)
    batch_size = check_positive_int(batch_size, "`batch_size`")
    check_export_file(output_path, "onnx")
    import onnx
    from google.protobuf.message import DecodeError
    from onnxruntime import quantization

    try:
        model = onnx.load(str(onnx_path))
    except DecodeError as error:  # protobuf's, which names no file
        raise ValueError(f"{onnx_path} cannot be read as an ONNX model ({error}); give the "
                         ".onnx file of `export_model(..., format=\"onnx\")`.") from None
    if not model.graph.input:  # an empty file parses as an empty model
        raise ValueError(f"{onnx_path} holds no ONNX model with an input (an empty file?); give "
                         "the .onnx file of `export_model(..., format=\"onnx\")`.")
    _check_quantisable(model, onnx_path, operators)
    input_name = model.graph.input[0].name
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with atomic_path(output_path, remove_abandoned=True) as temporary:
        quantization.quantize_static(
            model,
            str(temporary),
            _CalibrationImages(input_name, images, batch_size),
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(operators),
            per_channel=True,
            # U8S8, as ONNX Runtime recommends for x86: its int8 convolutions take
            # unsigned activations and signed weights. With signed activations only 23
            # of the demo model's 71 convolutions became QLinearConv and the model ran
            # slower than float32 (0.26 s against 0.25 s at 512x1024; U8S8: 0.16 s).
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )
    return output_path
