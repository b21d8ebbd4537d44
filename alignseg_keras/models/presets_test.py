import json
import pathlib
import warnings

import keras
import numpy as np
import pytest

from alignseg_keras import AlignSeg
from alignseg_keras.layers.preprocessing import ImageNormalization
from alignseg_keras.models import preset_files
from alignseg_keras.models.alignseg_backbone import AlignSegBackbone
from alignseg_keras.models.legacy import load_legacy_model
from alignseg_keras.models.presets import PRESETS
from alignseg_keras.models.presets import preset_arguments
from alignseg_keras.testing import TinyPyramidEncoder
from alignseg_keras.testing.layer_test import run_task_test

DATA = pathlib.Path(__file__).parents[2] / "tests" / "data"
PRESET_FILES = ["config.json", "metadata.json", "model.weights.h5", "task.json", "task.weights.h5"]


def small_model(num_classes=3, seed=0):
    """A tiny model on a tiny pyramid encoder, with non-trivial weights and statistics."""
    keras.utils.set_random_seed(seed)
    encoder = TinyPyramidEncoder([(f"P{level}", 8) for level in range(1, 6)], name="encoder")
    model = AlignSeg(num_classes, image_encoder=encoder, decoder_channels=8, context_bins=2)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = rng.normal(scale=0.1, size=weight.shape) + ("variance" in weight.path)
        weight.assign(value.astype("float32"))
    return model


IMAGES = np.random.default_rng(1).uniform(0, 255, (2, 37, 50, 3)).astype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = small_model()
    directory = tmp_path_factory.mktemp("presets") / "small"
    model.save_to_preset(directory, description="a test preset")
    return model, directory


def test_a_preset_directory_has_keras_hubs_layout(saved):
    model, directory = saved
    assert sorted(path.name for path in directory.iterdir()) == PRESET_FILES
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["parameter_count"] == model.count_params()
    assert metadata["description"] == "a test preset"
    assert {"keras_version", "alignseg_keras_version", "date_saved"} <= set(metadata)
    assert json.loads((directory / "config.json").read_text())["class_name"] == "AlignSegBackbone"
    assert json.loads((directory / "task.json").read_text())["class_name"] == "AlignSeg"


def test_a_preset_directory_gives_back_the_model(saved):
    model, directory = saved
    restored = AlignSeg.from_preset(directory)
    np.testing.assert_array_equal(restored.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))
    backbone = AlignSegBackbone.from_config(
        json.loads((directory / "config.json").read_text())["config"]
    )
    backbone.load_weights(directory / "model.weights.h5")
    np.testing.assert_array_equal(
        np.asarray(backbone(IMAGES)["d5"]), np.asarray(model.backbone(IMAGES)["d5"])
    )


def test_new_classes_keep_all_but_the_classifiers(saved):
    # As `load_official_checkpoint(num_classes=N)` does: the heads' hidden convolutions and
    # norms were dropped with the classifiers (about 1.2 M weights of the official model).
    model, directory = saved
    finetune = AlignSeg.from_preset(directory, num_classes=5, dropout=0.2)
    assert finetune.num_classes == 5 and finetune.dropout == 0.2
    for original, loaded in zip(model.backbone.weights, finetune.backbone.weights):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(original))
    fresh = AlignSeg(5, backbone=AlignSegBackbone.from_config(model.backbone.get_config()))
    for name in ("head", "auxiliary_head"):
        assert_same_weights(finetune.get_layer(name).hidden, model.get_layer(name).hidden)
        classifier = finetune.get_layer(name).classifier
        assert classifier.kernel.shape[-1] == 5
        # Fresh: as a new model's (zero biases), not a slice of the saved ones.
        np.testing.assert_array_equal(np.asarray(classifier.bias),
                                      np.asarray(fresh.get_layer(name).classifier.bias))
    without_auxiliary = AlignSeg.from_preset(directory, num_classes=5, deep_supervision=False)
    assert_same_weights(without_auxiliary.get_layer("head").hidden, model.get_layer("head").hidden)
    untrained = AlignSeg.from_preset(directory, load_weights=False)
    assert not np.array_equal(
        np.asarray(untrained.backbone.weights[0]), np.asarray(model.backbone.weights[0])
    )


def weights_of(layer):
    return [np.asarray(weight) for weight in layer.weights]


def assert_same_weights(layer, other):
    for mine, theirs in zip(weights_of(layer), weights_of(other), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_turning_deep_supervision_off_or_on_keeps_each_head_its_weights(saved, tmp_path):
    # Keras' weights files match layers by class and order: `head` once took the
    # auxiliary head's weights here, and the logits were off by hundreds.
    model, directory = saved
    without = AlignSeg.from_preset(directory, deep_supervision=False)
    assert not without.deep_supervision
    assert_same_weights(without.get_layer("head"), model.get_layer("head"))
    np.testing.assert_array_equal(without.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))
    without.save_to_preset(tmp_path / "without")
    with_again = AlignSeg.from_preset(tmp_path / "without", deep_supervision=True)
    assert_same_weights(with_again.get_layer("head"), model.get_layer("head"))
    fresh_kernel = weights_of(with_again.get_layer("auxiliary_head"))[0]  # a new head
    assert not np.array_equal(fresh_kernel, weights_of(model.get_layer("auxiliary_head"))[0])
    np.testing.assert_array_equal(with_again.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".weights.json"])
def test_load_weights_gives_each_head_its_own_across_deep_supervision(saved, tmp_path, suffix):
    # A training model's weights file loaded into an inference model: `head` took the
    # auxiliary head's weights, silently (logits off by up to 734 in the review's model).
    model, _ = saved
    path = tmp_path / f"trained{suffix}"
    if suffix == ".keras":
        model.save(path)
    else:  # .weights.json: sharded, its map names each variable's layer
        model.save_weights(path, **({"max_shard_size": 0.001} if suffix == ".weights.json" else {}))
    config = {**model.get_config(), "deep_supervision": False}
    deploy = AlignSeg.from_config(config)
    deploy.load_weights(path)
    assert_same_weights(deploy.get_layer("head"), model.get_layer("head"))
    assert_same_weights(deploy.backbone, model.backbone)
    np.testing.assert_array_equal(deploy.predict(IMAGES, verbose=0), model.predict(IMAGES, verbose=0))
    # And back: the auxiliary head the file lacks keeps its fresh weights.
    deploy.save_weights(tmp_path / "deploy.weights.h5")
    again = AlignSeg.from_config(model.get_config())
    fresh = weights_of(again.get_layer("auxiliary_head"))
    again.load_weights(tmp_path / "deploy.weights.h5")
    assert_same_weights(again.get_layer("head"), model.get_layer("head"))
    for kept, before in zip(weights_of(again.get_layer("auxiliary_head")), fresh, strict=True):
        np.testing.assert_array_equal(kept, before)


def test_a_weights_file_of_other_head_counts_goes_to_keras(saved, tmp_path):
    # Three head groups (a subclass's) built one twin after another without end.
    import h5py

    model, _ = saved
    path = tmp_path / "three.weights.h5"
    model.save_weights(path)
    with h5py.File(path, "a") as file:
        file["layers"].copy("segmentation_head", "segmentation_head_2")
    assert preset_files.saved_head_count(path) == 3
    again = AlignSeg.from_config(model.get_config())
    again.load_weights(path)  # Keras' own loading, once (the extra group unread)
    assert_same_weights(again.get_layer("head"), model.get_layer("head"))


def test_a_failed_write_leaves_the_previous_preset(saved, tmp_path, monkeypatch):
    model, _ = saved
    directory = tmp_path / "preset"
    model.save_to_preset(directory)
    before = (directory / "task.weights.h5").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(preset_files.keras.saving, "save_weights", full_disk)
    with pytest.raises(OSError, match="No space left"):
        small_model(seed=2).save_to_preset(directory)
    assert (directory / "task.weights.h5").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["preset"]


def test_preset_directories_refuse_what_they_cannot_do(saved, tmp_path):
    _, directory = saved
    with pytest.raises(ValueError, match="fixes its backbone; decoder_channels cannot override"):
        AlignSeg.from_preset(directory, decoder_channels=16)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that replacing it would delete \(notes.txt\)"):
        small_model().save_to_preset(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "config.json").write_text("{}")  # another program's, not a preset's
    with pytest.raises(ValueError, match=r"holds config.json but no metadata.json, task.json"):
        small_model().save_to_preset(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"
    (directory / "README.md").write_text("added for an upload")
    with pytest.raises(ValueError, match=r"holds files that replacing it would delete \(README.md\)"):
        small_model().save_to_preset(directory)
    assert (directory / "README.md").read_text() == "added for an upload"
    (directory / "README.md").unlink()


def test_a_preset_of_another_task_or_of_a_backbone_alone_is_named(saved, tmp_path):
    import shutil

    _, directory = saved
    other = tmp_path / "other_task"
    shutil.copytree(directory, other)
    task = json.loads((other / "task.json").read_text())
    (other / "task.json").write_text(json.dumps({**task, "class_name": "DeepLabV3ImageSegmenter"}))
    with pytest.raises(ValueError, match="a preset of a DeepLabV3ImageSegmenter .*not of an AlignSeg"):
        AlignSeg.from_preset(str(other))
    backbone_only = tmp_path / "backbone_only"
    shutil.copytree(directory, backbone_only)
    (backbone_only / "task.json").unlink()
    config = json.loads((backbone_only / "config.json").read_text())
    (backbone_only / "config.json").write_text(json.dumps({**config, "class_name": "ResNetBackbone"}))
    with pytest.raises(ValueError, match=r"AlignSeg\(num_classes, backbone="):
        AlignSeg.from_preset(str(backbone_only))
    (backbone_only / "config.json").write_text(json.dumps(config))  # ours, task.json lost
    with pytest.raises(ValueError, match="has no task.json"):
        AlignSeg.from_preset(str(backbone_only))


def test_a_class_count_of_zero_is_refused_not_read_as_the_presets(saved):
    # `num_classes or saved` kept the saved count with fresh, untrained heads.
    _, directory = saved
    for preset in (directory, "alignseg_resnet18_small"):
        with pytest.raises(ValueError, match="num_classes"):
            AlignSeg.from_preset(preset, num_classes=0)


def test_damaged_weight_files_are_named(saved, tmp_path):
    import shutil

    _, directory = saved
    for name in ("model.weights.h5", "task.weights.h5"):
        copy = tmp_path / name.split(".")[0]
        shutil.copytree(directory, copy)
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(data[: len(data) // 2])  # an interrupted copy
        with pytest.raises(ValueError, match=f"{copy / name} cannot be read as a Keras weights "
                                             "file .*truncated"):
            AlignSeg.from_preset(copy)


def test_a_preset_directory_named_like_a_model_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'.*model.keras' ends with .keras, a model file's "
                                         "extension; a preset is a folder"):
        small_model().save_to_preset(tmp_path / "model.keras")
    assert list(tmp_path.iterdir()) == []


def test_named_presets_and_unknown_names():
    assert preset_arguments("alignseg_resnet18_small", {"dropout": 0.3})["dropout"] == 0.3
    assert all(set(entry) == {"description", "arguments"} for entry in PRESETS.values())
    with pytest.raises(ValueError, match="Unknown preset 'resnet_vd_50'.*alignseg_resnet18_small"):
        AlignSeg.from_preset("resnet_vd_50")
    with pytest.raises(ValueError, match="has no task.json"):
        preset_files.load_task_config(DATA)


def test_arguments_that_would_be_ignored_are_errors():
    encoder = TinyPyramidEncoder([(f"P{level}", 8) for level in range(1, 6)])
    with pytest.raises(TypeError, match="unexpected keyword argument 'image_encodr'"):
        AlignSeg(5, image_encodr=encoder)
    with pytest.raises(ValueError, match="either `backbone` or `image_encoder`"):
        AlignSeg(5, backbone="resnet18", image_encoder=encoder)
    backbone = AlignSegBackbone(encoder, decoder_channels=8)
    with pytest.raises(ValueError, match="decoder_channels cannot change them"):
        AlignSeg(5, backbone=backbone, decoder_channels=16)
    with pytest.raises(ValueError, match="either `image_converter` or mean"):
        AlignSeg(5, backbone=backbone, image_converter=ImageNormalization((0, 0, 0)), mean=(1, 1, 1))


def test_a_keras_file_of_release_0_1_says_how_to_load_it():
    path = DATA / "legacy_alignseg_0_1.keras"
    with pytest.raises(ValueError, match="saved by alignseg_keras 0.1.*load_legacy_model"):
        keras.saving.load_model(path)
    model = load_legacy_model(path)
    expected = np.load(DATA / "legacy_alignseg_0_1_logits.npz")
    logits = np.asarray(model(expected["images"]))
    # The stored logits were computed on another CPU (AVX2); oneDNN's kernels for other
    # instruction sets sum in another order. Measured on an AVX-512 EPYC: max difference
    # 4.8e-5 of the largest |logit| (16.4), RMS 3.3e-5 of the RMS logit. A weight loaded
    # into the wrong place moves logits by O(1).
    scale = np.abs(expected["logits"]).max()
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=2e-4 * scale)
    assert model.backbone.offset_channels == 256  # 0.1's offset heads


def test_task_contract(tmp_path):
    masks = np.random.default_rng(2).integers(0, 3, IMAGES.shape[:3])
    run_task_test(small_model(), IMAGES, masks, tmp_path)


def test_a_preset_directory_takes_new_normalisation_values(saved):
    model, directory = saved
    saved_config = model.image_converter.get_config()
    changed = AlignSeg.from_preset(directory, mean=(0.0, 0.0, 0.0), bgr=True)
    config = changed.image_converter.get_config()
    assert tuple(config["mean"]) == (0.0, 0.0, 0.0) and config["bgr"] is True
    assert tuple(config["std"]) == tuple(saved_config["std"])  # the preset's
    for kept, loaded in zip(model.backbone.weights, changed.backbone.weights):
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(loaded))
    with pytest.raises(ValueError, match="Give either `image_converter` or std, not both"):
        AlignSeg.from_preset(directory, std=(1.0, 1.0, 1.0), image_converter=changed.image_converter)


def test_the_backbone_of_a_preset_directory_loads_alone_and_under_new_heads(saved, tmp_path):
    from alignseg_keras.models.alignseg_backbone import AlignSegBackbone

    model, directory = saved
    backbone = AlignSegBackbone.from_preset(directory)
    fresh = AlignSegBackbone.from_preset(directory, load_weights=False)
    new_task = AlignSeg(5, backbone=str(directory))
    assert new_task.num_classes == 5
    for kept, loaded, rebuilt in zip(model.backbone.weights, backbone.weights,
                                     new_task.backbone.weights):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(kept))
        np.testing.assert_array_equal(np.asarray(rebuilt), np.asarray(kept))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(fresh.weights, backbone.weights))
    with pytest.raises(ValueError, match="takes a preset directory"):
        AlignSegBackbone.from_preset("alignseg_resnet18_small")
    with pytest.raises(ValueError, match="cannot change them"):
        AlignSeg(5, backbone=str(directory), decoder_channels=16)


def test_a_new_segmenter_on_a_preset_backbone_keeps_its_normalisation(tmp_path):
    from alignseg_keras.testing import tiny_alignseg

    normalised = tiny_alignseg(3, seed=0, mean=(10.0, 20.0, 30.0), std=(2.0, 3.0, 4.0), bgr=True)
    normalised.save_to_preset(tmp_path / "preset")
    model = AlignSeg(5, backbone=tmp_path / "preset")  # a pathlib.Path
    assert model.normalization == {"mean": [10.0, 20.0, 30.0], "std": [2.0, 3.0, 4.0], "bgr": True}
    model = AlignSeg(5, backbone=str(tmp_path / "preset"), mean=(0.0, 0.0, 0.0))
    assert model.normalization["mean"] == [0.0, 0.0, 0.0] and model.normalization["bgr"] is True


def test_a_preset_of_another_task_is_not_replaced(tmp_path):
    # keras-hub's task presets use the same five names.
    directory = tmp_path / "deeplab"
    directory.mkdir()
    for name in PRESET_FILES:
        (directory / name).write_text("{}")
    (directory / "task.json").write_text('{"class_name": "DeepLabV3ImageSegmenter"}')
    with pytest.raises(ValueError, match=r"holds a preset of a DeepLabV3ImageSegmenter \(its "
                                         r"task.json\), which replacing it would delete"):
        small_model().save_to_preset(directory)
    assert (directory / "task.json").read_text() == '{"class_name": "DeepLabV3ImageSegmenter"}'


def test_a_backbone_alone_is_written_and_read_as_keras_hubs_backbones(saved, tmp_path):
    from alignseg_keras.backbones.encoders import encoder_input_convention

    model, _ = saved
    directory = tmp_path / "backbone"
    model.backbone.save_to_preset(directory, description="the backbone")
    assert sorted(path.name for path in directory.iterdir()) == [
        "config.json", "metadata.json", "model.weights.h5"]
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["parameter_count"] == model.backbone.count_params()
    assert metadata["description"] == "the backbone"
    backbone = AlignSegBackbone.from_preset(directory)
    for kept, loaded in zip(model.backbone.weights, backbone.weights):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(kept))
    with pytest.raises(ValueError, match=r"AlignSegBackbone alone, without heads .* give `num_classes`"):
        AlignSeg.from_preset(directory)
    for task in (AlignSeg.from_preset(directory, num_classes=5), AlignSeg(5, backbone=directory)):
        assert task.num_classes == 5
        # No image converter in the preset: the encoder's convention.
        expected = encoder_input_convention(model.backbone.image_encoder)
        assert task.normalization == {"mean": list(expected["mean"]), "std": list(expected["std"]),
                                      "bgr": expected["bgr"]}
        for kept, loaded in zip(model.backbone.weights, task.backbone.weights):
            np.testing.assert_array_equal(np.asarray(loaded), np.asarray(kept))
    fresh = AlignSeg.from_preset(directory, num_classes=5, load_weights=False, mean=(1.0, 2.0, 3.0))
    assert fresh.normalization["mean"] == [1.0, 2.0, 3.0]
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(fresh.backbone.weights, model.backbone.weights))
    with pytest.raises(ValueError, match="cannot change them"):
        AlignSeg.from_preset(directory, num_classes=5, decoder_channels=16)
    model.backbone.save_to_preset(directory)  # an earlier backbone preset is replaced
    assert json.loads((directory / "metadata.json").read_text())["description"] == ""


def test_a_backbone_preset_replaces_no_other_files(saved, tmp_path):
    model, whole = saved
    # A whole AlignSeg's preset: its heads would be deleted.
    with pytest.raises(ValueError, match=r"holds files that replacing it would delete "
                                         r"\(task.json, task.weights.h5\)"):
        model.backbone.save_to_preset(whole)
    assert sorted(path.name for path in whole.iterdir()) == PRESET_FILES
    keras_hub = tmp_path / "resnet"  # keras-hub's backbone presets use the same names
    keras_hub.mkdir()
    (keras_hub / "config.json").write_text('{"class_name": "ResNetBackbone"}')
    (keras_hub / "metadata.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds a preset of a ResNetBackbone \(its config.json\)"):
        model.backbone.save_to_preset(keras_hub)
    assert (keras_hub / "config.json").read_text() == '{"class_name": "ResNetBackbone"}'
    with pytest.raises(ValueError, match="ends with .keras"):
        model.backbone.save_to_preset(tmp_path / "backbone.keras")
    alone = tmp_path / "alone"
    model.backbone.save_to_preset(alone)
    with pytest.raises(ValueError, match=r"but no task.json"):  # a whole model over it
        model.save_to_preset(alone)


def test_a_preset_directory_named_as_a_registered_preset_is_warned_about(saved, tmp_path):
    # `from_preset(name)` then loaded the directory in its parent folder and the registered
    # architecture (without weights) elsewhere, silently.
    model, _ = saved
    with pytest.warns(UserWarning, match="has the name of the registered preset "
                                         "'alignseg_resnet18_small'"):
        model.save_to_preset(tmp_path / "alignseg_resnet18_small")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_to_preset(tmp_path / "my_small")
    assert not [w for w in caught if "registered preset" in str(w.message)]
