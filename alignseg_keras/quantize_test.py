import importlib.util
import re

import numpy as np
import pytest

from alignseg_keras.export import export_model
from alignseg_keras.export import missing_requirements
from alignseg_keras.quantize import quantize_onnx_int8
from alignseg_keras.synthetic_scenes import synthetic_scene_arrays
from alignseg_keras.testing import tiny_alignseg

pytestmark = pytest.mark.skipif(
    bool(missing_requirements("onnx")) or importlib.util.find_spec("onnxruntime") is None,
    reason="needs tf2onnx, onnx and onnxruntime (pip install tf2onnx onnx onnxruntime)",
)


def pixels(count):
    """`count` 8x8 RGB images of pixels spread over 0..255 (constant ones are refused)."""
    return np.linspace(0, 255, count * 8 * 8 * 3).reshape(count, 8, 8, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize")
    path = folder / "alignseg.onnx"
    export_model(tiny_alignseg(8, seed=0), path, format="onnx")
    images, _ = synthetic_scene_arrays(8, (64, 128), seed=0)
    quantized = quantize_onnx_int8(path, folder / "alignseg_int8.onnx", images[:4], batch_size=2)
    return path, quantized, images[4:].astype("float32")


def test_convolutions_are_int8_and_the_sampling_stays_float(exported):
    import onnx

    _, quantized, _ = exported
    graph = onnx.load(str(quantized)).graph
    producers = {output: node for node in graph.node for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert convolutions
    for node in convolutions:  # data and weights both arrive through DequantizeLinear
        assert [producers[name].op_type for name in node.input[:2]] == ["DequantizeLinear"] * 2, node.name
    gathers = [node for node in graph.node if node.op_type in ("Gather", "GatherND", "GatherElements")]
    assert gathers
    for node in gathers:
        assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    weights = [producers[node.input[1]].input[0] for node in convolutions]
    assert all(initializers[name].data_type == onnx.TensorProto.INT8 for name in weights)


def test_onnx_runtime_runs_the_convolutions_as_int8_kernels(exported, tmp_path):
    import onnx
    import onnxruntime

    _, quantized, _ = exported
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
    convolutions = sum(node.op_type == "Conv" for node in onnx.load(str(quantized)).graph.node)
    optimized = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    # Fused into QLinearConv, not dequantised weights in a float convolution (which is what
    # signed int8 activations got for most of them: slower than float32).
    assert optimized.count("QLinearConv") >= 0.9 * convolutions, (optimized.count("QLinearConv"), convolutions)


def test_the_int8_model_predicts_what_the_float32_model_predicts(exported):
    import onnxruntime

    path, quantized, images = exported
    outputs = []
    for model_path in (path, quantized):
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: images})[0])
    float_logits, int8_logits = outputs
    assert int8_logits.shape == float_logits.shape == (4, 64, 128, 8)
    # About 96% of the labels agree for an untrained model of this size (held-out scenes, not the
    # calibration ones); wrong scales or zero points would leave chance (1/8).
    assert (float_logits.argmax(-1) == int8_logits.argmax(-1)).mean() > 0.9


def test_calibration_images_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"\[count, height, width, 3\]; received shape \(4, 8, 8\)"):
        quantize_onnx_int8("unused.onnx", tmp_path / "out.onnx", np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_onnx_int8("unused.onnx", tmp_path / "out.onnx", np.full((1, 8, 8, 3), np.nan))
    with pytest.raises(ValueError, match="batch_size"):
        quantize_onnx_int8("unused.onnx", tmp_path / "out.onnx", pixels(1), batch_size=0)
    with pytest.raises(ValueError, match=r"positive int; received 1\.7"):  # was truncated to 1
        quantize_onnx_int8("unused.onnx", tmp_path / "out.onnx", pixels(1), batch_size=1.7)
    with pytest.raises(ValueError, match="`calibration_images` must be images of one size"):
        quantize_onnx_int8("unused.onnx", tmp_path / "out.onnx",
                           [np.zeros((8, 8, 3)), np.zeros((8, 9, 3))])
    assert not (tmp_path / "out.onnx").exists()


def test_the_destination_is_checked_before_the_model_is_read(tmp_path):
    # Both failed after the model was read (the folder after the whole calibration),
    # naming the temporary file.
    images = pixels(1)
    (tmp_path / "taken.onnx").mkdir()
    with pytest.raises(ValueError, match="taken.onnx is a folder; the ONNX export is a file"):
        quantize_onnx_int8("unused.onnx", tmp_path / "taken.onnx", images)
    with pytest.raises(ValueError, match=r"ends with \.onnx"):
        quantize_onnx_int8("unused.onnx", tmp_path / "int8.onx", images)


def test_a_file_that_is_no_onnx_model_is_named(tmp_path):
    # protobuf's DecodeError ("Wire format was corrupt") named no file.
    (tmp_path / "model.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"model.tflite cannot be read as an ONNX model"):
        quantize_onnx_int8(tmp_path / "model.tflite", tmp_path / "int8.onnx", pixels(1))
    (tmp_path / "empty.onnx").write_bytes(b"")  # parses as an empty model: an IndexError
    with pytest.raises(ValueError, match=r"empty.onnx holds no ONNX model with an input"):
        quantize_onnx_int8(tmp_path / "empty.onnx", tmp_path / "int8.onnx", pixels(1))


def test_a_missing_output_folder_is_created(exported, tmp_path):
    path, _, images = exported
    written = quantize_onnx_int8(path, tmp_path / "new" / "int8.onnx", images[:1])
    assert (tmp_path / "new" / "int8.onnx").is_file() and written == tmp_path / "new" / "int8.onnx"


def test_calibration_images_of_another_scale_are_refused(tmp_path):
    # The exported model takes 0..255 pixels: 0..1 or normalised images calibrated every
    # activation range on other inputs (a mean logit error 7x larger), without a word.
    cases = {"received values -2.1..2.5 (normalised images?": np.linspace(-2.1, 2.5, 192),
             "received values 0..300": np.linspace(0, 300, 192),
             "0..1 images? The exported model takes 0..255 pixels": np.linspace(0, 1, 192),
             "constant images calibrate no activation range": np.zeros(192)}
    for message, values in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            quantize_onnx_int8("unused.onnx", tmp_path / "out.onnx", values.reshape(1, 8, 8, 3))
    assert not (tmp_path / "out.onnx").exists()


def test_a_quantised_file_or_operators_it_lacks_are_refused(exported, tmp_path):
    # Quantised again, the file was one ONNX Runtime refuses to load; "conv" for "Conv"
    # wrote a copy with nothing quantised. Both returned normally.
    path, quantized, images = exported
    with pytest.raises(ValueError, match=r"alignseg_int8.onnx is quantised already \(it holds "
                                         r"DequantizeLinear, QuantizeLinear\)"):
        quantize_onnx_int8(quantized, tmp_path / "again.onnx", images[:1])
    with pytest.raises(ValueError, match=r"`operators` \['conv'\] name operator types that .* "
                                         r"does not hold \(\['conv'\]\)"):
        quantize_onnx_int8(path, tmp_path / "none.onnx", images[:1], operators=("conv",))
    assert sorted(tmp_path.iterdir()) == []
