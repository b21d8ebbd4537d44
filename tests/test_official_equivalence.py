"""The converted Keras model against an independent PyTorch implementation of the authors' network.

`torch_reference.py` re-implements the authors' AlignSeg in PyTorch from the
published facts, with every normalisation layer computing what mapillary's
InPlaceABN computes (scale `|weight| + eps`, not plain BatchNorm); its
state_dict has exactly their 858 keys. With random weights (a quarter of the
normalisation weights negative, BatchNorm statistics non-trivial) saved as a
`.pth`, the Keras model from `load_official_checkpoint` must give the same main
and deep-supervision logits in inference mode, to float32 rounding.
"""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch equivalence tests need PyTorch: pip install torch"
)

import keras  # noqa: E402
from torch_reference import BGR_MEAN  # noqa: E402
from torch_reference import ReferenceAlignSeg  # noqa: E402
from torch_reference import legacy_sample  # noqa: E402
from torch_reference import randomize  # noqa: E402

from alignseg_keras.convert import encoder_architecture  # noqa: E402
from alignseg_keras.convert import export_official_state_dict  # noqa: E402
from alignseg_keras.convert import load_backbone_checkpoint  # noqa: E402
from alignseg_keras.convert import load_official_checkpoint  # noqa: E402
from alignseg_keras.convert import load_official_weights  # noqa: E402
from alignseg_keras.testing.checkpoints import official_shapes  # noqa: E402
from alignseg_keras.layers.alignment import AlignmentLayer  # noqa: E402
from alignseg_keras.testing.references import ALIGNMENT_SIZES as SIZES  # noqa: E402
from alignseg_keras.testing.references import reference_alignment  # noqa: E402

# Non-square sizes that are not multiples of 32; the second gives a 1x1 map at
# stride 32 (degenerate AlignCM sampling).
IMAGE_SIZES = [(250, 333), (17, 23)]
# float32 rounding through ResNet-101 and the decoder (about 150 layers, each
# adding a few ulps, 6e-8 relative) stays near 1e-6 of the logit scale; a
# wrong normalisation formula (plain BatchNorm on these weights) gives errors
# of order 1, and one leaving out only the `+ eps` of the scale about 1e-4 (both measured).
RELATIVE_TOLERANCE = 1e-5


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


def reference_logits(reference, images):
    with torch.no_grad():
        return dict(zip(("logits", "aux_logits"), map(to_nhwc, reference(to_nchw(images)))))


def assert_same_logits(actual, expected):
    for name, expected_logits in expected.items():
        actual_logits = np.asarray(actual[name])
        assert actual_logits.shape == expected_logits.shape
        scale = np.abs(expected_logits).max()
        assert scale > 0.1, "degenerate reference logits"
        error = np.abs(actual_logits - expected_logits).max() / scale
        assert error < RELATIVE_TOLERANCE, f"{name}: max error {error:.2e} of the logit scale"


def test_the_report_counts_the_negative_normalisation_weights(checkpoint, converted):
    reference, path = checkpoint
    model, _ = converted
    report = load_official_weights(model, path)  # the same tensors again
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 139 and len(report.negative_weights) == 139
    assert report.negative_count == sum(int((m.weight < 0).sum()) for m in norms)
    assert report.loaded == 719 and len(report.ignored) == 139


@pytest.mark.parametrize("height,width", IMAGE_SIZES)
def test_keras_logits_equal_pytorch_logits(checkpoint, converted, height, width):
    reference, _ = checkpoint
    _, both_heads = converted
    images = np.random.default_rng(height).uniform(0, 255, (1, height, width, 3))
    images = images.astype("float32")
    assert_same_logits(both_heads(images, training=False), reference_logits(reference, images))


def test_offsets_are_large_enough_to_exercise_the_sampler(converted):
    model, _ = converted
    images = np.random.default_rng(0).uniform(0, 255, (1, 97, 131, 3)).astype("float32")
    offsets = model.offset_model()(images)
    for name, field in offsets.items():
        assert np.abs(np.asarray(field)).mean() > 0.3, name


def test_export_gives_back_an_equivalent_pytorch_state_dict(checkpoint, converted):
    """Every tensor comes back; negative ABN weights as their absolute value, same logits."""
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
    fresh.eval()
    loaded = fresh.state_dict()
    for name, tensor in reference.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        original = tensor.numpy()
        if name.endswith(".weight") and original.ndim == 1:
            # gamma = |w| + eps in float32, then gamma - eps: |w| to within an ulp of gamma.
            np.testing.assert_allclose(loaded[name].numpy(), np.abs(original), rtol=0, atol=2e-7)
        else:
            np.testing.assert_array_equal(loaded[name].numpy(), original, err_msg=name)
    images = np.random.default_rng(1).uniform(0, 255, (1, 17, 23, 3)).astype("float32")
    assert_same_logits(reference_logits(fresh, images), reference_logits(reference, images))


def test_backbone_checkpoint_gives_the_reference_backbone_features():
    """An ImageNet-style file (backbone + fc, no counters) into the deep-stem ResNet-50."""
    reference = randomize(ReferenceAlignSeg(19, 50), seed=2).eval()
    state = {
        name: tensor.numpy()
        for name, tensor in reference.state_dict().items()
        if name.startswith(("conv", "bn", "layer")) and not name.endswith("num_batches_tracked")
    }
    state["fc.weight"] = np.zeros((1000, 2048), "float32")
    state["fc.bias"] = np.zeros((1000,), "float32")
    model = load_backbone_checkpoint(state, num_classes=5)
    assert encoder_architecture(model) == "resnet50_deepstem" and model.num_classes == 5
    images = np.random.default_rng(3).uniform(0, 255, (1, 61, 75, 3)).astype("float32")
    with torch.no_grad():
        mean = torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
        expected = reference.backbone(to_nchw(images).flip(1) - mean)
    preprocessed = model.get_layer("normalization")(images)
    actual = model.image_encoder(preprocessed).values()  # P2..P5
    for level, (keras_features, torch_features) in enumerate(zip(actual, expected), start=1):
        torch_features = to_nhwc(torch_features)
        scale = np.abs(torch_features).max()
        error = np.abs(np.asarray(keras_features) - torch_features).max() / scale
        assert error < RELATIVE_TOLERANCE, f"x{level}: max error {error:.2e} of the feature scale"
