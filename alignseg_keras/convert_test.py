import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from alignseg_keras import convert
from alignseg_keras.layers.conv_norm_activation import BN_EPSILON
from alignseg_keras.testing.checkpoints import assert_exported_equals
from alignseg_keras.testing.checkpoints import imagenet_backbone_state
from alignseg_keras.testing.checkpoints import is_norm_weight
from alignseg_keras.testing.checkpoints import official_shapes
from alignseg_keras.testing.checkpoints import random_state_dict

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
    assert convert.encoder_architecture(r101_model) == "resnet101_deepstem"
    assert r101_model.num_classes == 19
    exported = convert.export_official_state_dict(r101_model)
    # The authors' keys, in their order, num_batches_tracked included.
    assert list(exported) == list(official_shapes(101))
    assert_exported_equals(exported, r101_state)


def test_conv_kernels_are_transposed_to_keras_layout(r101_state, r101_model):
    kernel = r101_model.backbone.get_layer("align_fa3").high_resolution_offsets.offsets.kernel
    torch_weight = r101_state["CAB3.delta_gen2.2.weight"]  # (out, in, kh, kw)
    np.testing.assert_array_equal(np.asarray(kernel)[2, 0, 17, 1], torch_weight[1, 17, 2, 0])



def test_inplace_abn_weights_become_their_absolute_value_plus_eps(r101_state, r101_model):
    """mapillary/inplace_abn scales by (|weight| + eps) / sqrt(var + eps)."""
    weight = r101_state["CAM.adapt.1.weight"]
    assert (weight < 0).any()
    gamma = np.asarray(r101_model.backbone.get_layer("align_cm").local_reduce.norm.gamma)
    np.testing.assert_array_equal(gamma, np.abs(weight) + np.float32(1e-5))
    backbone_gamma = np.asarray(r101_model.image_encoder.get_layer("layer3_7_bn2").gamma)
    np.testing.assert_array_equal(
        backbone_gamma, np.abs(r101_state["layer3.7.bn2.weight"]) + np.float32(1e-5)
    )
    # The variance term needs the same eps in the Keras layers.
    assert convert.INPLACE_ABN_EPSILON == BN_EPSILON
    assert r101_model.backbone.get_layer("align_cm").local_reduce.norm.epsilon == BN_EPSILON


def test_the_report_says_what_was_loaded(r50_state, r50_built):
    report = convert.load_official_weights(r50_built, r50_state)
    negative = {
        name.rsplit(".", 1)[0]: int((array < 0).sum())
        for name, array in r50_state.items()
        if is_norm_weight(name, array.shape) and (array < 0).any()
    }
    assert report.negative_weights == negative and report.negative_count > 0
    assert report.loaded == len(convert.official_weight_map(50))
    assert set(report.ignored) == {n for n in r50_state if n.endswith("num_batches_tracked")}
    text = str(report)
    assert f"Loaded {report.loaded} tensors" in text
    assert f"{report.negative_count} negative in {len(negative)} layers" in text


def test_export_refuses_scales_that_inplace_abn_cannot_represent(r50_model):
    norm = r50_model.backbone.get_layer("rcb3b").norm
    gamma = np.asarray(norm.gamma).copy()
    gamma[[3, 7]] = [-0.2, 4e-6]
    norm.gamma.assign(gamma)
    listed = r"below 1e-05.*\n\s+rcb3b/norm/gamma \(RRB3b\.norm\): 2 of 256"
    with pytest.raises(ValueError, match=listed):
        convert.export_official_state_dict(r50_model)


def test_non_finite_tensors_are_refused(r50_state, r50_model):
    state = dict(r50_state)
    state["CAM.pool.2.running_var"] = np.full_like(state["CAM.pool.2.running_var"], np.nan)
    listed = r"not finite \(1\):\s+CAM\.pool\.2\.running_var: 2048 NaN"
    with pytest.raises(ValueError, match=listed):
        convert.load_official_weights(r50_model, state)


@pytest.mark.parametrize("height,width", [(65, 97), (33, 47)])
def test_converted_model_gives_finite_logits_at_odd_sizes(r101_model, height, width):
    images = np.random.default_rng(height).uniform(0, 255, (1, height, width, 3))
    logits = np.asarray(r101_model(images.astype("float32"), training=False))
    assert logits.shape == (1, height, width, 19)
    assert np.all(np.isfinite(logits))
    assert logits.std() > 0


def test_depth_and_classes_are_read_from_the_checkpoint(r50_state, r50_model):
    assert convert.encoder_architecture(r50_model) == "resnet50_deepstem"
    assert r50_model.num_classes == 19
    exported = convert.export_official_state_dict(r50_model)
    assert list(exported) == list(r50_state)
    assert_exported_equals(
        exported, r50_state, ("layer3.5.conv2.weight", "head.3.bias", "CAM.pool.3.weight")
    )


def test_ddp_prefix_and_state_dict_wrapper_are_removed(r50_state, r50_model):
    other = random_state_dict(50, seed=3)
    wrapped = {"state_dict": {f"module.{name}": value for name, value in other.items()}}
    assert convert.read_state_dict(wrapped).keys() == r50_state.keys()
    convert.load_official_weights(r50_model, wrapped)
    np.testing.assert_array_equal(
        convert.export_official_state_dict(r50_model)["RRB2a.residual.2.weight"],
        other["RRB2a.residual.2.weight"],
    )


def test_a_training_scripts_wrapper_is_unwrapped_or_named(r50_state, r50_model):
    # `{"epoch": ..., "model_state": ...}` gave 725 lines naming the default network
    # (ResNet-101) and a wrong --backbone-only hint.
    wrapped = {"epoch": np.array(120000), "model_state": dict(r50_state)}
    assert convert.read_state_dict(wrapped).keys() == r50_state.keys()
    assert convert.encoder_architecture(convert.load_official_checkpoint(wrapped)) == "resnet50_deepstem"
    with pytest.raises(ValueError, match=r"several dicts of tensors \('net', 'ema'\); pass the one"):
        convert.read_state_dict({"net": dict(r50_state), "ema": dict(r50_state)})
    # A checkpoint of another network: a short error, not 700 missing names.
    other = {f"encoder.block{index}.weight": np.zeros((2, 2), "float32") for index in range(9)}
    with pytest.raises(ValueError) as info:
        convert.load_official_weights(r50_model, other)
    message = str(info.value)
    assert "none of its 9 names is one of the 464 tensors expected (its names: " in message
    assert "encoder.block0.weight, " in message and "--backbone-only" not in message
    assert len(message.splitlines()) == 2


def test_long_mismatch_lists_are_cut(r50_state, r50_model):
    state = {name: value for name, value in r50_state.items() if not name.startswith("layer3.")}
    with pytest.raises(ValueError) as info:
        convert.load_official_weights(r50_model, state)
    missing = sum(name.startswith("layer3.") and not name.endswith("num_batches_tracked")
                  for name in r50_state)
    assert f"missing ({missing}):" in str(info.value)
    assert f"... and {missing - convert.LISTED_NAMES} more" in str(info.value)


def test_an_inference_model_without_the_auxiliary_head_loads_the_rest(r50_state, r50_model):
    model = convert.load_official_checkpoint(r50_state, deep_supervision=False)
    assert [layer.name for layer in model.layers if layer.name == "auxiliary_head"] == []
    image = np.random.default_rng(0).uniform(0, 255, (1, 40, 56, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model(image)), np.asarray(r50_model(image)))


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
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=r"Cannot read .*truncated.npz.* as a NumPy .npz"):
        convert.read_state_dict(truncated)
    objects = tmp_path / "objects.npz"
    np.savez(objects, names=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"Cannot read .*objects.npz.*allow_pickle"):
        convert.read_state_dict(objects)
    torch = pytest.importorskip("torch")
    renamed = tmp_path / "saved_by_torch.npz"  # read as an archive of 500 byte arrays
    torch.save({"bn1.running_mean": torch.zeros(3)}, renamed)
    assert list(convert.read_state_dict(renamed)) == ["bn1.running_mean"]
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.pth' as a PyTorch checkpoint \(.*\): the file is "
                                         r"damaged .* or not a PyTorch checkpoint\.$"):
        convert.read_state_dict(text)
    import pickle

    plain = tmp_path / "detectron.pth"  # a plain pickle: not torch's format either
    plain.write_bytes(pickle.dumps({"a": np.ones(2)}))
    with pytest.raises(ValueError) as info:
        convert.read_state_dict(plain)
    assert "the file is damaged" in str(info.value) and "weights_only" not in str(info.value)
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
        image_encoder=SimpleNamespace(architecture="resnet50_deepstem"),
        weights=[FakeVariable(path) for path in paths + ["extra/kernel"]],
    )
    with pytest.raises(ValueError) as info:
        convert.load_official_weights(model, r50_state)
    message = str(info.value)
    assert "not the authors' network (alignseg_resnet50_official)" in message
    assert "no PyTorch counterpart: extra/kernel" in message
    assert "the model lacks: auxiliary_head/classifier/bias" in message


def test_export_and_load_need_the_authors_backbone():
    model = SimpleNamespace(image_encoder=SimpleNamespace(architecture="resnet18"))
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


def test_backbone_weights_load_into_the_backbone_only(r50_model):
    state = imagenet_backbone_state(50, seed=7)
    assert set(convert.backbone_weight_map(50)) == set(state) - {"fc.weight", "fc.bias"}
    head_before = np.asarray(r50_model.get_layer("head").hidden.conv.kernel)
    report = convert.load_backbone_weights(r50_model, state)
    assert report.loaded == len(state) - 2 and report.ignored == ("fc.weight", "fc.bias")
    assert report.negative_count == sum(
        int((a < 0).sum()) for n, a in state.items() if is_norm_weight(n, a.shape)
    )
    backbone = r50_model.image_encoder
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("layer2_3_conv2").kernel),
        state["layer2.3.conv2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("bn2").gamma), np.abs(state["bn2.weight"]) + np.float32(1e-5)
    )
    np.testing.assert_array_equal(
        np.asarray(r50_model.get_layer("head").hidden.conv.kernel), head_before
    )


def test_backbone_loading_is_strict(r50_model, r50_state):
    state = imagenet_backbone_state(50, seed=8)
    del state["layer4.2.bn3.running_mean"]
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:32]
    state["layer5.0.conv1.weight"] = np.zeros((1,), "float32")
    with pytest.raises(ValueError) as info:
        convert.load_backbone_weights(r50_model, state)
    message = str(info.value)
    assert "the backbone of alignseg_resnet50_official" in message
    assert re.search(r"missing \(1\):\s+layer4\.2\.bn3\.running_mean", message)
    assert re.search(r"unexpected \(1\):\s+layer5\.0\.conv1\.weight", message)
    assert "layer1.0.conv1.weight: checkpoint (32, 128, 1, 1), expected (64, 128, 1, 1)" in message
    with pytest.raises(ValueError, match="whole AlignSeg checkpoint.*load_official_checkpoint"):
        convert.load_backbone_weights(r50_model, r50_state)


def test_backbone_checkpoint_builds_the_official_model_of_its_depth(r50_built):
    state = imagenet_backbone_state(50, seed=9)
    model = convert.load_backbone_checkpoint(state, num_classes=3)
    assert convert.encoder_architecture(model) == "resnet50_deepstem" and model.num_classes == 3
    np.testing.assert_array_equal(
        np.asarray(model.image_encoder.get_layer("conv3").kernel),
        state["conv3.weight"].transpose(2, 3, 1, 0),
    )


def test_stage_blocks_come_from_the_backbone_definition():
    from alignseg_keras.backbones import resnet
    from alignseg_keras.convert import STAGE_BLOCKS

    assert STAGE_BLOCKS == {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    assert list(STAGE_BLOCKS[101]) == list(resnet.STAGE_BLOCKS["resnet101_deepstem"])
