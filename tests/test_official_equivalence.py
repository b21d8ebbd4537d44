"""The converted Keras model against an independent PyTorch implementation of the authors' network.

`torch_reference.py` re-implements the authors' AlignSeg in PyTorch from the
published facts; its state_dict has exactly their 858 keys. With random
weights (BatchNorm statistics included) saved as a `.pth`, the Keras model from
`load_official_checkpoint` must give the same logits in inference mode.
"""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch equivalence tests need PyTorch: pip install torch"
)

import keras  # noqa: E402
from torch_reference import ReferenceAlignSeg  # noqa: E402
from torch_reference import legacy_sample  # noqa: E402
from torch_reference import randomize  # noqa: E402

from alignseg_keras.convert import export_official_state_dict  # noqa: E402
from alignseg_keras.convert import load_official_checkpoint  # noqa: E402
from alignseg_keras.convert_test import official_shapes  # noqa: E402
from alignseg_keras.layers.alignment import AlignmentLayer  # noqa: E402
from alignseg_keras.layers.alignment_test import SIZES  # noqa: E402
from alignseg_keras.layers.alignment_test import reference_alignment  # noqa: E402

# Odd sizes; the second gives a 1x1 map at stride 32 (degenerate AlignCM sampling).
IMAGE_SIZES = [(97, 131), (17, 23)]


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """One PyTorch thread: beside TensorFlow's pools, more threads spin and run far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def to_nchw(array):
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def to_nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("depth", [50, 101])
def test_reference_state_dict_is_the_authors(depth):
    state = ReferenceAlignSeg(19, depth).state_dict()
    expected = official_shapes(depth)
    assert list(state) == list(expected)
    assert {name: tuple(tensor.shape) for name, tensor in state.items()} == expected


@pytest.mark.parametrize("in_h,in_w,out_h,out_w", SIZES)
def test_legacy_grid_sample_equals_the_official_alignment(in_h, in_w, out_h, out_w):
    rng = np.random.default_rng(in_h * 10 + out_w)
    features = rng.normal(size=(2, in_h, in_w, 3)).astype("float32")
    offsets = rng.uniform(-4, 4, size=(2, out_h, out_w, 2)).astype("float32")
    sampled = to_nhwc(legacy_sample(to_nchw(features), (out_h, out_w), to_nchw(offsets)))
    np.testing.assert_allclose(
        sampled, reference_alignment(features, offsets, "official"), atol=1e-5
    )
    keras_sampled = np.asarray(AlignmentLayer("official")([features, offsets]))
    np.testing.assert_allclose(keras_sampled, sampled, atol=1e-5)


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a PyTorch file")
    with pytest.raises(ValueError, match="Cannot read .*broken.pth.* as a PyTorch checkpoint"):
        load_official_checkpoint(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ResNet-101 reference with random weights, saved as a DDP-style .pth file."""
    reference = randomize(ReferenceAlignSeg(19, 101), seed=0, offset_scale=3.0).eval()
    path = tmp_path_factory.mktemp("official") / "alignseg_random.pth"
    state = {f"module.{name}": tensor for name, tensor in reference.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return reference, path


@pytest.fixture(scope="module")
def converted(checkpoint):
    _, path = checkpoint
    model = load_official_checkpoint(path)
    # The functional graph gives both heads in inference mode.
    return model, keras.Model(model.input, model.output)


@pytest.mark.parametrize("height,width", IMAGE_SIZES)
def test_keras_logits_equal_pytorch_logits(checkpoint, converted, height, width):
    reference, _ = checkpoint
    _, both_heads = converted
    images = np.random.default_rng(height).uniform(0, 255, (2, height, width, 3))
    images = images.astype("float32")
    with torch.no_grad():
        expected = [to_nhwc(logits) for logits in reference(to_nchw(images))]
    outputs = both_heads(images, training=False)
    for name, torch_logits in zip(("logits", "aux_logits"), expected):
        keras_logits = np.asarray(outputs[name])
        assert keras_logits.shape == (2, height, width, 19)
        scale = np.abs(torch_logits).max()
        assert scale > 0.1, "degenerate reference logits"
        error = np.abs(keras_logits - torch_logits).max() / scale
        assert error < 1e-4, f"{name}: max error {error:.2e} of the logit scale"


def test_offsets_are_large_enough_to_exercise_the_sampler(converted):
    model, _ = converted
    images = np.random.default_rng(0).uniform(0, 255, (1, 97, 131, 3)).astype("float32")
    offsets = model.offset_model()(images)
    for name, field in offsets.items():
        assert np.abs(np.asarray(field)).mean() > 0.3, name


def test_export_gives_back_the_pytorch_tensors(checkpoint, converted):
    reference, _ = checkpoint
    model, _ = converted
    exported = export_official_state_dict(model)
    with torch.device("meta"):  # no initialisation: load_state_dict assigns the tensors
        fresh = ReferenceAlignSeg(19, 101)
    fresh.load_state_dict(
        {name: torch.from_numpy(array) for name, array in exported.items()},
        strict=True,
        assign=True,
    )
    loaded = fresh.state_dict()
    for name, tensor in reference.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(loaded[name].numpy(), tensor.numpy(), err_msg=name)
