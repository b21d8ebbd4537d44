import ctypes
import os
import platform
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.frozen_inference import FrozenInferenceModel
from alignseg_keras.frozen_inference import release_freed_memory
from alignseg_keras.inference import inference_model
from alignseg_keras.inference import predict_multiscale
from alignseg_keras.inference import predict_sliding
from alignseg_keras.inference import predict_whole
from alignseg_keras.inference_test import random_images as images
from alignseg_keras.testing import randomize_statistics
from alignseg_keras.testing import relative_error
from alignseg_keras.testing import tiny_alignseg

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs")


@pytest.fixture(scope="module")
def model():
    model = tiny_alignseg(num_classes=4)
    randomize_statistics(model, biases=True)
    return model


@pytest.fixture(scope="module")
def frozen(model):
    return FrozenInferenceModel(model, "float32")


def test_float32_logits_equal_the_models_at_any_size(model, frozen):
    for shape in ((2, 64, 96, 3), (1, 80, 48, 3)):
        x = images(shape)
        expected = np.asarray(model.predict_on_batch(x), np.float64)
        logits = frozen.predict_on_batch(x)
        assert logits.dtype == np.float32 and logits.shape == shape[:3] + (4,)
        # The same float32 arithmetic; TensorFlow may fuse and order the additions
        # differently, which moves logits by a few float32 roundings.
        assert relative_error(logits, expected) < 1e-5
        # The same function called directly: equal up to the kernels' own run-to-run
        # rounding (bit-equal on most CPUs; not with oneDNN limited to AVX2).
        assert relative_error(frozen(x).numpy(), np.asarray(logits, np.float64)) < 1e-5


def test_bfloat16_computes_as_the_inference_model(model):
    frozen = FrozenInferenceModel(model, "bfloat16")
    assert frozen.precision == "bfloat16"
    x = images((2, 64, 64, 3), seed=2)
    expected = np.asarray(inference_model(model, "bfloat16").predict_on_batch(x), np.float64)
    reference = np.asarray(model.predict_on_batch(x), np.float64)
    logits = frozen.predict_on_batch(x)
    assert logits.dtype == np.float32
    # Both round kernels and activations to bfloat16 (2^-9 relative per rounding),
    # but not at the same places: where TensorFlow fuses a bias addition into a
    # convolution the sum is rounded once instead of twice. So the two differ
    # about as much as each differs from float32 (~2% of the largest logit for
    # this tiny model); the frozen graph must be as accurate as the Keras model.
    assert relative_error(logits, reference) <= 1.5 * relative_error(expected, reference)
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.95
    # And it does round: a graph frozen in float32 passed the two checks above.
    assert relative_error(logits, reference) >= 0.25 * relative_error(expected, reference)
    convolutions = [node.attr["T"].type for node in frozen._function.graph.as_graph_def().node
                    if node.op == "Conv2D"]
    assert convolutions and set(convolutions) == {tf.bfloat16.as_datatype_enum}


def test_weights_are_constants_and_a_snapshot(model, frozen):
    operations = {op.type for op in frozen._function.graph.get_operations()}
    assert not operations & {"ReadVariableOp", "VarHandleOp", "ResourceGather"}
    x = images((1, 32, 32, 3), seed=3)
    before = frozen.predict_on_batch(x)
    kernel = next(v for v in model.weights if "kernel" in v.path)
    original = kernel.numpy()
    try:
        kernel.assign(original * 2.0)
        assert relative_error(model.predict_on_batch(x), np.asarray(before, np.float64)) > 1e-2
        # Rounding (1e-5, above) is far below what the doubled kernel changes.
        assert relative_error(frozen.predict_on_batch(x), np.asarray(before, np.float64)) < 1e-5
    finally:
        kernel.assign(original)


def test_the_model_is_left_as_it_was():
    model = tiny_alignseg(num_classes=3)
    weights = [w.copy() for w in model.get_weights()]
    FrozenInferenceModel(model, "bfloat16")
    assert model.dtype_policy.name == "float32"
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not any(getattr(layer, "folded", False) for layer in model._flatten_layers(recursive=True))


def test_inference_functions_take_it_in_place_of_the_model(model, frozen):
    x = images((2, 50, 70, 3), seed=4)
    # The logits may differ by a few float32 roundings (1e-5 of their largest magnitude,
    # as above); a softmax moves no probability by more than half the largest logit change.
    tolerance = 0.5 * 1e-5 * np.abs(model.predict_on_batch(x)).max()
    for predict, kwargs in (
        (predict_whole, {}),
        (predict_sliding, {"tile_size": 32, "batch_size": 3}),
        (predict_multiscale, {"scales": (0.75, 1.0), "flip": True}),
    ):
        expected = predict(model, x, **kwargs)
        probabilities = predict(frozen, x, **kwargs)
        assert probabilities.shape == expected.shape
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(predict_whole(frozen, x[0], precision="float32"), predict_whole(model, x[0]),
                               rtol=0, atol=tolerance)


def test_a_precision_other_than_its_own_is_refused(frozen):
    with pytest.raises(ValueError, match="computes in float32, frozen; received precision='bfloat16'"):
        predict_whole(frozen, images((1, 32, 32, 3)), precision="bfloat16")


def test_bad_arguments_name_the_culprit(model, frozen):
    with pytest.raises(ValueError, match=r"RGB images .* received shape \(32, 32, 3\)"):
        frozen.predict_on_batch(images((32, 32, 3)))
    with pytest.raises(ValueError, match=r"RGB images .* received shape \(1, 32, 32, 4\)"):
        frozen(images((1, 32, 32, 4)))
    with pytest.raises(ValueError, match="`precision` must be one of float32, bfloat16; received 'float16'"):
        FrozenInferenceModel(model, "float16")
    assert frozen.num_classes == 4 and frozen.normalization == model.normalization


def test_uint8_tensors_and_empty_batches_are_taken_as_by_the_model(model, frozen):
    x = np.round(images((1, 32, 32, 3), seed=6)).astype("uint8")
    expected = frozen.predict_on_batch(x.astype("float32"))
    # A TensorFlow uint8 tensor failed in tf.convert_to_tensor(..., dtype=float32).
    np.testing.assert_array_equal(frozen(tf.constant(x)).numpy(), expected)
    for shape in ((0, 32, 32, 3), (1, 0, 0, 3)):  # a graph execution error before
        assert frozen.predict_on_batch(np.zeros(shape, "uint8")).shape == shape[:3] + (4,)


def test_the_graph_is_optimised_at_construction_between_two_releases(model, monkeypatch):
    from alignseg_keras import frozen_inference

    events = []
    monkeypatch.setattr(frozen_inference, "release_freed_memory", lambda: events.append("release"))
    original = frozen_inference._frozen_function

    def recording_frozen_function(inference_copy, image_size):
        function = original(inference_copy, image_size)

        def call(images):
            events.append(("call", tuple(images.shape)))
            return function(images)

        return call

    monkeypatch.setattr(frozen_inference, "_frozen_function", recording_frozen_function)
    frozen = FrozenInferenceModel(model, "float32")
    warm_up = ("call", (1,) + frozen_inference.WARM_UP_IMAGE_SIZE + (3,))
    assert events == ["release", warm_up, "release"]
    frozen.predict_on_batch(images((1, 32, 32, 3)))
    assert events[-1] == ("call", (1, 32, 32, 3))


def test_a_model_of_one_image_size_is_optimised_at_that_size():
    from alignseg_keras.frozen_inference import WARM_UP_IMAGE_SIZE
    from alignseg_keras.frozen_inference import warm_up_image_size

    fixed = tiny_alignseg(num_classes=3, image_shape=(96, 32, 3))
    assert warm_up_image_size(fixed) == (96, 32)
    assert warm_up_image_size(tiny_alignseg(num_classes=3)) == WARM_UP_IMAGE_SIZE
    x = images((1, 96, 32, 3), seed=5)
    expected = np.asarray(fixed.predict_on_batch(x), np.float64)
    assert relative_error(FrozenInferenceModel(fixed).predict_on_batch(x), expected) < 1e-5


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="malloc_trim is glibc's")
def test_release_freed_memory_gives_freed_heap_pages_back():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KiB blocks come from the heap (below glibc's mmap threshold of 128 KiB); the
    # last one stays allocated, so the freed ones lie below the heap's top and free()
    # does not give them back by itself.
    block, count = 64 * 1024, 1024
    blocks = [libc.malloc(block) for _ in range(count)]
    try:
        for address in blocks:
            ctypes.memset(address, 1, block)
        for address in blocks[:-1]:
            libc.free(address)
        before = resident_mib()
        assert release_freed_memory() is True
        # 64 MiB were freed; allow for the rest of the process moving meanwhile.
        assert before - resident_mib() > 48
    finally:
        libc.free(blocks[-1])


def resident_mib():
    """This process's resident memory now, from /proc/self/statm (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
