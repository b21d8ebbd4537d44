import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from alignseg_keras import convert

SHAPES_FILE = Path(__file__).parents[1] / "tests" / "data" / "official_state_dict_shapes.json"


def official_shapes(depth):
    """The authors' state_dict shapes (19 classes); ResNet-50 drops layer3 blocks 6-22."""
    shapes = json.loads(SHAPES_FILE.read_text())
    if depth == 50:
        shapes = {
            name: shape
            for name, shape in shapes.items()
            if not (m := re.match(r"layer3\.(\d+)\.", name)) or int(m.group(1)) < 6
        }
    return {name: tuple(shape) for name, shape in shapes.items()}


def random_state_dict(depth, seed=0, shapes=None):
    """Random tensors with the official names; conv weights He-scaled, BN statistics non-trivial."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in (shapes or official_shapes(depth)).items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(1000, "int64")
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype("float32")
        elif len(shape) == 4:
            fan_in = np.prod(shape[1:])
            state[name] = (rng.standard_normal(shape) * 0.5 * np.sqrt(2 / fan_in)).astype("float32")
        elif name.endswith(".weight"):  # BatchNorm gamma
            state[name] = rng.uniform(0.5, 1.5, shape).astype("float32")
        else:  # biases and running means
            state[name] = (rng.standard_normal(shape) * 0.1).astype("float32")
    return state


@pytest.fixture(scope="module")
def r101_state():
    return random_state_dict(101)


@pytest.fixture(scope="module")
def r101_model(r101_state):
    return convert.load_official_checkpoint(r101_state)


@pytest.fixture(scope="module")
def r50_state():
    return random_state_dict(50, seed=1)


@pytest.fixture(scope="module")
def r50_built(r50_state):
    """Built from the checkpoint: depth and classes come from its tensors."""
    return convert.load_official_checkpoint(r50_state)


@pytest.fixture
def r50_model(r50_built, r50_state):
    """The shared ResNet-50 model, holding `r50_state` at the start of every test."""
    convert.load_official_weights(r50_built, r50_state)
    return r50_built


def test_every_official_tensor_maps_to_a_keras_weight_of_its_shape(r101_model):
    shapes = official_shapes(101)
    weight_map = convert.official_weight_map(101)
    variables = {variable.path: variable for variable in r101_model.weights}
    assert set(weight_map) == {n for n in shapes if not n.endswith("num_batches_tracked")}
    # Every Keras weight is covered, exactly once.
    assert sorted(weight_map.values()) == sorted(variables)
    for name, path in weight_map.items():
        assert convert.torch_shape(name, variables[path].shape) == shapes[name], name


def test_resnet101_round_trip_gives_back_every_array(r101_state, r101_model):
    assert r101_model.backbone_name == "resnet101_deepstem"
    assert r101_model.num_classes == 19
    exported = convert.export_official_state_dict(r101_model)
    # The authors' keys, in their order, num_batches_tracked included.
    assert list(exported) == list(official_shapes(101))
    for name, array in r101_state.items():
        if name.endswith("num_batches_tracked"):
            assert exported[name].shape == ()
        else:
            np.testing.assert_array_equal(exported[name], array, err_msg=name)


def test_conv_kernels_are_transposed_to_keras_layout(r101_state, r101_model):
    kernel = r101_model.get_layer("align_fa3").high_resolution_offsets.offsets.kernel
    torch_weight = r101_state["CAB3.delta_gen2.2.weight"]  # (out, in, kh, kw)
    np.testing.assert_array_equal(np.asarray(kernel)[2, 0, 17, 1], torch_weight[1, 17, 2, 0])
    gamma = r101_model.get_layer("align_cm").local_reduce.norm.gamma
    np.testing.assert_array_equal(np.asarray(gamma), r101_state["CAM.adapt.1.weight"])


@pytest.mark.parametrize("height,width", [(65, 97), (33, 47)])
def test_converted_model_gives_finite_logits_at_odd_sizes(r101_model, height, width):
    images = np.random.default_rng(height).uniform(0, 255, (1, height, width, 3))
    logits = np.asarray(r101_model(images.astype("float32"), training=False))
    assert logits.shape == (1, height, width, 19)
    assert np.all(np.isfinite(logits))
    assert logits.std() > 0


def test_depth_and_classes_are_read_from_the_checkpoint(r50_state, r50_model):
    assert r50_model.backbone_name == "resnet50_deepstem"
    assert r50_model.num_classes == 19
    exported = convert.export_official_state_dict(r50_model)
    assert list(exported) == list(r50_state)
    for name in ("layer3.5.conv2.weight", "head.3.bias", "CAM.pool.3.weight"):
        np.testing.assert_array_equal(exported[name], r50_state[name])


def test_ddp_prefix_and_state_dict_wrapper_are_removed(r50_state, r50_model):
    other = random_state_dict(50, seed=3)
    wrapped = {"state_dict": {f"module.{name}": value for name, value in other.items()}}
    assert convert.read_state_dict(wrapped).keys() == r50_state.keys()
    convert.load_official_weights(r50_model, wrapped)
    np.testing.assert_array_equal(
        convert.export_official_state_dict(r50_model)["RRB2a.residual.2.weight"],
        other["RRB2a.residual.2.weight"],
    )


def test_missing_unexpected_and_misshaped_keys_are_listed_in_one_error(r50_state, r50_model):
    state = random_state_dict(50, seed=6)
    del state["CAB4.delta_gen1.2.weight"]
    del state["layer2.3.bn1.running_var"]
    state["decoder.extra.weight"] = np.zeros((3,), "float32")
    state["RRB3a.unify.weight"] = np.zeros((256, 512, 1, 1), "float32")
    with pytest.raises(ValueError) as info:
        convert.load_official_weights(r50_model, state)
    message = str(info.value)
    assert "alignseg_resnet50_official" in message
    missing = r"missing \(2\):\s+layer2\.3\.bn1\.running_var\s+CAB4\.delta_gen1\.2\.weight"
    assert re.search(missing, message)
    assert re.search(r"unexpected \(1\):\s+decoder\.extra\.weight", message)
    expected = "RRB3a.unify.weight: checkpoint (256, 512, 1, 1), expected (256, 1024, 1, 1)"
    assert expected in message
    # Nothing was loaded, not even the tensors that did match.
    bias = np.asarray(r50_model.get_layer("head").hidden.conv.bias)
    np.testing.assert_array_equal(bias, r50_state["head.0.bias"])


def test_batch_counters_are_optional_but_not_anywhere(r50_state, r50_model):
    state = {n: v for n, v in r50_state.items() if not n.endswith("num_batches_tracked")}
    convert.load_official_weights(r50_model, state)
    state["head.0.num_batches_tracked"] = np.array(0)  # head.0 is a conv, not a BatchNorm
    with pytest.raises(ValueError, match=r"unexpected \(1\):\s+head\.0\.num_batches_tracked"):
        convert.load_official_weights(r50_model, state)


def test_a_different_class_count_is_a_shape_error_unless_classifiers_are_skipped(r50_model):
    state = random_state_dict(50, seed=4)
    for name in ("head.3.weight", "head.3.bias", "dsn.3.weight", "dsn.3.bias"):
        state[name] = state[name][:7]
    wrong_shape = r"wrong shape \(4\):\s+dsn\.3\.weight: checkpoint \(7, 256, 1, 1\)"
    with pytest.raises(ValueError, match=wrong_shape):
        convert.load_official_weights(r50_model, state)
    before = np.asarray(r50_model.get_layer("head").classifier.kernel)
    convert.load_official_weights(r50_model, state, skip_classifiers=True)
    np.testing.assert_array_equal(np.asarray(r50_model.get_layer("head").classifier.kernel), before)
    np.testing.assert_array_equal(
        np.asarray(r50_model.get_layer("head").hidden.conv.bias), state["head.0.bias"]
    )


def test_npz_files_and_bad_sources(tmp_path, r50_state):
    path = tmp_path / "weights.npz"
    np.savez(path, **r50_state)
    read = convert.read_state_dict(path)
    np.testing.assert_array_equal(read["bn1.running_mean"], r50_state["bn1.running_mean"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert.read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="dict of name -> array; received list"):
        convert.read_state_dict([1, 2])
    with pytest.raises(ValueError, match="`preset` must be one of"):
        convert.load_official_checkpoint(r50_state, preset="alignseg_resnet18_small")


def test_pth_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "official.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install alignseg-keras\[torch\]"):
        convert.read_state_dict(path)


def test_a_model_with_other_weights_is_rejected(r50_state):
    class FakeVariable:
        def __init__(self, path):
            self.path = path

    paths = list(convert.official_weight_map(50).values())
    paths = [path for path in paths if not path.startswith("auxiliary_head/")]
    model = SimpleNamespace(
        backbone_name="resnet50_deepstem",
        weights=[FakeVariable(path) for path in paths + ["extra/kernel"]],
    )
    with pytest.raises(ValueError) as info:
        convert.load_official_weights(model, r50_state)
    message = str(info.value)
    assert "not the authors' network (alignseg_resnet50_official)" in message
    assert "no PyTorch counterpart: extra/kernel" in message
    assert "the model lacks: auxiliary_head/classifier/bias" in message


def test_export_and_load_need_the_authors_backbone():
    model = SimpleNamespace(backbone_name="resnet18")  # what is checked first
    with pytest.raises(ValueError, match="resnet50_deepstem or resnet101_deepstem.*'resnet18'"):
        convert.export_official_state_dict(model)
    with pytest.raises(ValueError, match="resnet50_deepstem or resnet101_deepstem.*'resnet18'"):
        convert.load_official_weights(model, {})


def test_infer_depth_and_classes():
    assert convert.infer_depth(official_shapes(101)) == 101
    assert convert.infer_depth(official_shapes(50)) == 50
    assert convert.infer_depth({"conv1.weight": 0}) is None
    assert convert.infer_num_classes({"head.3.weight": np.zeros((150, 256, 1, 1))}) == 150
    assert convert.infer_num_classes({}) is None
