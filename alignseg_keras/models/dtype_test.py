"""`dtype=` on AlignSeg, its backbone and its encoders, as keras-hub's models take it.

The reference is Keras' own mechanism: a model built under the global policy
`mixed_bfloat16` (every layer left to the global policy). A model built with
`dtype="mixed_bfloat16"` while the global policy is float32 must be that model.
"""

import warnings

import keras
import numpy as np
import pytest

from alignseg_keras import AlignSeg
from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.config_utils import global_dtype_policy
from alignseg_keras.inference import as_precision
from alignseg_keras.models.alignseg_backbone import AlignSegBackbone
from alignseg_keras.testing import TinyPyramidEncoder
from alignseg_keras.testing import tiny_alignseg

# The layers AlignSeg pins to float32: the logits leave the model in float32.
FLOAT32_OUTPUT_LAYERS = {"head_upsample", "head_crop", "auxiliary_head_upsample",
                         "auxiliary_head_crop"}
IMAGES = np.random.default_rng(0).uniform(0, 255, (2, 45, 61, 3)).astype("float32")


def _policies(model):
    """Layer name -> dtype policy name of every layer in `model` but its inputs."""
    return {
        layer.name: layer.dtype_policy.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not isinstance(layer, keras.layers.InputLayer)
    }


def _computing_layers(model):
    policies = _policies(model)
    return {name: policy for name, policy in policies.items()
            if name not in FLOAT32_OUTPUT_LAYERS}


@pytest.fixture(scope="module")
def bfloat16_model():
    assert keras.config.dtype_policy().name == "float32"
    return tiny_alignseg(num_classes=4, seed=0, dtype="mixed_bfloat16")


def test_dtype_reaches_every_layer_but_the_float32_logits(bfloat16_model):
    assert bfloat16_model.dtype_policy.name == "mixed_bfloat16"
    assert set(_computing_layers(bfloat16_model).values()) == {"mixed_bfloat16"}
    policies = _policies(bfloat16_model)
    assert {policies[name] for name in FLOAT32_OUTPUT_LAYERS} == {"float32"}
    assert {weight.dtype for weight in bfloat16_model.weights} == {"float32"}
    assert bfloat16_model.predict(IMAGES, verbose=0).dtype == np.float32


def test_dtype_gives_the_model_the_global_policy_builds(bfloat16_model):
    with global_dtype_policy("mixed_bfloat16"):
        reference = tiny_alignseg(num_classes=4, seed=0)
    assert _policies(reference) == _policies(bfloat16_model)
    reference.set_weights(bfloat16_model.get_weights())
    for training in (False, True):
        got = keras.tree.map_structure(keras.ops.convert_to_numpy,
                                       bfloat16_model(IMAGES, training=training))
        wanted = keras.tree.map_structure(keras.ops.convert_to_numpy,
                                          reference(IMAGES, training=training))
        if training:  # dropout draws differ; compare the structure and the dtypes
            assert {key: value.dtype for key, value in got.items()} == {
                key: value.dtype for key, value in wanted.items()}
        else:
            np.testing.assert_array_equal(got, wanted)


def test_the_policy_is_not_saved_a_loaded_model_takes_the_loading_processes(
        bfloat16_model, tmp_path):
    config = bfloat16_model.get_config()
    assert "dtype" not in config and "dtype" not in config["backbone"]["config"]
    assert "dtype" not in config["image_converter"]["config"]
    bfloat16_model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.dtype_policy.name == "float32"
    assert set(_policies(loaded).values()) == {"float32"}
    np.testing.assert_array_equal(
        loaded.predict(IMAGES, verbose=0),
        as_precision(bfloat16_model, "float32").predict(IMAGES, verbose=0))
    with global_dtype_policy("mixed_bfloat16"):
        mixed = keras.saving.load_model(tmp_path / "model.keras")
    assert set(_computing_layers(mixed).values()) == {"mixed_bfloat16"}
    assert _policies(mixed) == _policies(bfloat16_model)


def test_a_policy_saved_by_an_earlier_version_does_not_decide_the_loaded_one():
    model = tiny_alignseg(num_classes=3, seed=0)
    config = model.get_config()
    # What earlier versions wrote: the policy each model was built in.
    mixed = {"module": "keras", "class_name": "DTypePolicy",
             "config": {"name": "mixed_bfloat16"}, "registered_name": None}
    config["dtype"] = mixed
    config["backbone"]["config"]["dtype"] = mixed
    config["backbone"]["config"]["image_encoder"]["config"]["dtype"] = mixed
    config["image_converter"]["config"]["dtype"] = mixed
    restored = AlignSeg.from_config(config)
    assert restored.dtype_policy.name == "float32"
    assert set(_policies(restored).values()) == {"float32"}


def test_a_preset_directory_loads_into_the_dtype_asked(bfloat16_model, tmp_path):
    model = as_precision(bfloat16_model, "float32")
    model.save_to_preset(tmp_path / "preset")
    loaded = AlignSeg.from_preset(str(tmp_path / "preset"), dtype="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert set(_computing_layers(loaded).values()) == {"mixed_bfloat16"}
    assert _policies(loaded) == _policies(bfloat16_model)
    np.testing.assert_array_equal(loaded.predict(IMAGES, verbose=0),
                                  bfloat16_model.predict(IMAGES, verbose=0))
    assert AlignSeg.from_preset(str(tmp_path / "preset")).dtype_policy.name == "float32"


def test_a_named_preset_takes_dtype():
    model = AlignSeg.from_preset("alignseg_resnet18_small", num_classes=3,
                                 dtype="mixed_bfloat16")
    assert set(_computing_layers(model).values()) == {"mixed_bfloat16"}


SERIALIZED_MIXED = keras.dtype_policies.serialize(keras.DTypePolicy("mixed_bfloat16"))


@pytest.mark.parametrize("architecture,dtype", [
    ("resnet18", "mixed_bfloat16"), ("resnet50_deepstem", "mixed_bfloat16"),
    ("resnet50", "mixed_bfloat16"), ("resnet50", SERIALIZED_MIXED),
])
def test_resnet_encoders_take_dtype(architecture, dtype):
    encoder = ResNetEncoder(architecture, dtype=dtype)
    assert encoder.dtype_policy.name == "mixed_bfloat16"
    assert set(_policies(encoder).values()) == {"mixed_bfloat16"}
    assert keras.config.dtype_policy().name == "float32"  # keras.applications' scope ends
    features = encoder(np.zeros((1, 64, 64, 3), "float32"))
    assert {keras.backend.standardize_dtype(value.dtype) for value in features.values()} == {
        "bfloat16"}


def test_parts_given_in_another_policy_are_named_in_a_warning():
    backbone = AlignSegBackbone(ResNetEncoder("resnet18"), decoder_channels=8)
    with pytest.warns(UserWarning, match="backbone given, 'alignseg_backbone', computes in "
                                         "'float32'") as record:
        model = AlignSeg(3, backbone=backbone, dtype="mixed_bfloat16")
    assert {warning.filename for warning in record} == {__file__}  # the user's line
    assert model.get_layer("head").compute_dtype == "bfloat16"
    assert model.backbone.get_layer("rcb1a").compute_dtype == "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlignSeg(3, backbone=backbone, dtype="float32")
        AlignSeg(3, backbone=backbone)


def plain_functional_encoder(pinned="float32", dtype=None):
    """A functional encoder (built in the global policy; its layers in `dtype`) with
    `pyramid_outputs` set as an attribute, and a layer pinned to `pinned` after its
    last convolution."""
    encoder = TinyPyramidEncoder(dtype=dtype)  # five stride-2 convolutions
    images = keras.Input((None, None, 3))
    x, pyramid = images, {}
    for layer in encoder.layers[1:]:
        x = layer(x)
        pyramid[layer.name] = x
    del pyramid[encoder.layers[1].name]  # stride 2
    last = list(pyramid)[-1]
    pyramid[last] = keras.layers.Dense(8, dtype=pinned, name="pinned")(pyramid[last])
    model = keras.Model(images, list(pyramid.values()))
    model.pyramid_outputs = pyramid
    return model


def test_a_plain_functional_encoder_follows_the_loading_policy_and_keeps_its_pins(tmp_path):
    with global_dtype_policy("mixed_bfloat16"):
        model = AlignSeg(3, image_encoder=plain_functional_encoder(), decoder_channels=8)
    encoder_policies = _policies(model.backbone.image_encoder)
    assert encoder_policies.pop("pinned") == "float32"
    assert set(encoder_policies.values()) == {"mixed_bfloat16"}
    model.save(tmp_path / "model.keras")
    with global_dtype_policy("mixed_float16"):
        loaded = keras.saving.load_model(tmp_path / "model.keras")
    policies = _policies(loaded.backbone.image_encoder)
    assert policies.pop("pinned") == "float32"
    assert set(policies.values()) == {"mixed_float16"}
    assert set(_computing_layers(loaded).values()) - {"float32"} == {"mixed_float16"}
    # as_precision rewrote the encoder's input tensor's dtype as a policy name.
    converted = as_precision(keras.saving.load_model(tmp_path / "model.keras"), "bfloat16")
    assert converted.predict(IMAGES[:1], verbose=0).dtype == np.float32


def test_a_functional_encoder_whose_layers_compute_in_the_dtype_asked_gives_no_warning():
    encoder = plain_functional_encoder(pinned="float32", dtype="mixed_bfloat16")
    assert encoder.dtype_policy.name == "float32"  # Keras' functional wrapper
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlignSeg(3, image_encoder=encoder, decoder_channels=8, dtype="mixed_bfloat16")


def test_a_preset_directory_refuses_another_backbone(bfloat16_model, tmp_path):
    bfloat16_model.save_to_preset(tmp_path / "preset")
    with pytest.raises(ValueError, match="fixes its backbone; backbone cannot override"):
        AlignSeg.from_preset(str(tmp_path / "preset"), backbone="resnet34")
