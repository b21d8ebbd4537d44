import keras
import numpy as np
import pytest

from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.backbones.encoders import pyramid_feature_model
from alignseg_keras.backbones.encoders import pyramid_strides
from alignseg_keras.testing import TinyPyramidEncoder


def test_resnet_encoder_has_the_pyramid_contract_and_a_config():
    encoder = ResNetEncoder("resnet18", name="encoder")
    assert list(encoder.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    features = encoder(np.zeros((1, 64, 96, 3), "float32"))
    assert {key: tuple(value.shape) for key, value in features.items()} == {
        "P2": (1, 16, 24, 64),
        "P3": (1, 8, 12, 128),
        "P4": (1, 4, 6, 256),
        "P5": (1, 2, 3, 512),
    }
    assert pyramid_strides(encoder) == {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
    restored = ResNetEncoder.from_config(encoder.get_config())
    assert restored.name == "encoder" and restored.count_params() == encoder.count_params()
    assert encoder.input_convention["bgr"] is False
    assert ResNetEncoder("resnet50_deepstem").input_convention["std"] == (1.0, 1.0, 1.0)


def test_resnet_encoder_errors():
    with pytest.raises(ValueError, match="Unknown ResNet architecture 'vgg16'"):
        ResNetEncoder("vgg16")
    with pytest.raises(ValueError, match="'resnet18' has no downloadable weights"):
        ResNetEncoder("resnet18", weights="imagenet")


def test_levels_are_chosen_by_measured_stride_not_by_key():
    # MiT-style keys: P1..P4 at strides 4..32, after a stride-2 map the model also exposes.
    levels = [("stem", 4), ("P1", 8), ("P2", 16), ("P3", 32), ("P4", 64)]
    encoder = TinyPyramidEncoder(levels)
    assert pyramid_strides(encoder) == {"stem": 2, "P1": 4, "P2": 8, "P3": 16, "P4": 32}
    features = pyramid_feature_model(encoder)(np.zeros((2, 64, 32, 3), "float32"))
    assert [tuple(f.shape) for f in features] == [
        (2, 16, 8, 8),
        (2, 8, 4, 16),
        (2, 4, 2, 32),
        (2, 2, 1, 64),
    ]


def test_a_fixed_input_size_is_probed_at_that_size():
    encoder = TinyPyramidEncoder([(f"P{level}", 4) for level in range(1, 6)], image_shape=(96, 96, 3))
    assert pyramid_strides(encoder) == {"P1": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}


def test_four_plain_outputs_still_work():
    inputs = keras.Input((None, None, 3))
    outputs = [keras.layers.Conv2D(4, 1, strides=s)(inputs) for s in (4, 8, 16, 32)]
    features = pyramid_feature_model(keras.Model(inputs, outputs))
    assert len(features.outputs) == 4


def test_missing_strides_and_wrong_encoders_are_named():
    shallow = TinyPyramidEncoder([("P1", 4), ("P2", 4), ("P3", 4)], name="shallow")
    with pytest.raises(ValueError, match=r"'shallow' has none at stride 16, 32 \(its pyramid: P1: "):
        pyramid_feature_model(shallow)
    inputs = keras.Input((None, None, 3))
    single = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs), name="single")
    with pytest.raises(ValueError, match="with `pyramid_outputs`.*received Functional 'single'"):
        pyramid_feature_model(single)


def test_an_encoder_of_token_sequences_is_refused_with_its_shapes():
    images = keras.Input((None, None, 3))
    maps = [keras.layers.Conv2D(4, 3, strides=2 ** level, padding="same")(images)
            for level in range(2, 6)]
    tokens = keras.layers.Reshape((-1, 4))(maps[-1])
    encoder = keras.Model(images, maps[:-1] + [tokens])
    encoder.pyramid_outputs = {"P2": maps[0], "P3": maps[1], "P4": maps[2], "P5": tokens}
    with pytest.raises(ValueError, match=r"feature maps .*'P5': \(1, 64, 4\)"):
        pyramid_strides(encoder)
