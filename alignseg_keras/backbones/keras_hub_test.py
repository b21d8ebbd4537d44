"""keras-hub's own backbones as AlignSeg encoders (small random configurations; no download)."""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is an optional extra")

from alignseg_keras import AlignSeg  # noqa: E402
from alignseg_keras.backbones import encoders  # noqa: E402
from alignseg_keras.backbones.encoders import pyramid_strides  # noqa: E402

IMAGES = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3)).astype("uint8")


def small_resnet(**kwargs):
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        use_pre_activation=False,
        **kwargs,
    )


def small_mit(**kwargs):
    return keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1, 1, 1],
        num_layers=4,
        layerwise_num_heads=[1, 1, 1, 1],
        layerwise_sr_ratios=[8, 4, 2, 1],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3, 3, 3],
        layerwise_strides=[4, 2, 2, 2],
        hidden_dims=[8, 8, 8, 8],
        image_shape=(64, 64, 3),
        **kwargs,
    )


@pytest.mark.parametrize("build,image_shape", [(small_resnet, (None, None, 3)),
                                               (small_mit, (64, 64, 3))])
def test_keras_hub_backbones_are_encoders_and_save(build, image_shape, tmp_path):
    encoder = build()
    assert sorted(pyramid_strides(encoder).values())[-4:] == [4, 8, 16, 32]
    model = AlignSeg(3, image_encoder=encoder, decoder_channels=8, image_shape=image_shape)
    expected = model.predict(IMAGES, verbose=0)
    assert expected.shape == (1, 64, 64, 3)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(restored.predict(IMAGES, verbose=0), expected)


def test_keras_hub_presets_by_name_are_loaded_only_when_named(monkeypatch):
    calls = []

    def from_preset(preset, load_weights=True, dtype=None):
        calls.append((preset, load_weights))
        assert dtype is None
        return small_resnet()

    def converter_from_preset(preset):  # as keras-hub for a preset without a converter
        calls.append(("image_converter.json", preset))
        raise FileNotFoundError(f"`image_converter.json` doesn't exist in preset {preset}")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", from_preset)
    monkeypatch.setattr(keras_hub.layers.ImageConverter, "from_preset", converter_from_preset)
    model = AlignSeg(3, backbone="resnet_18_imagenet", decoder_channels=8)
    assert calls == [("resnet_18_imagenet", True), ("image_converter.json", "resnet_18_imagenet")]
    assert model.normalization["std"] == list(encoders.IMAGENET_RGB["std"])
    keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert len(calls) == 2  # rebuilding from a config downloads nothing


def test_a_keras_hub_preset_named_by_its_directory_computes_in_the_dtype_asked(tmp_path):
    # keras-hub's own from_preset, on a preset directory written by keras-hub.
    small_resnet().save_to_preset(str(tmp_path / "preset"))
    model = AlignSeg(3, backbone=str(tmp_path / "preset"), decoder_channels=8,
                     dtype="mixed_bfloat16")
    encoder = model.backbone.image_encoder
    assert isinstance(encoder, keras_hub.models.ResNetBackbone)
    assert encoder.dtype_policy.name == "mixed_bfloat16"
    convolutions = [layer for layer in encoder._flatten_layers()
                    if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    assert model.predict(IMAGES, verbose=0).dtype == np.float32


def test_a_keras_hub_encoder_built_in_the_dtype_asked_gives_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AlignSeg(3, image_encoder=small_resnet(dtype="mixed_bfloat16"), decoder_channels=8,
                 dtype="mixed_bfloat16")


def test_an_encoder_given_in_another_policy_is_named_in_a_warning():
    with pytest.warns(UserWarning, match="image encoder given.*'float32'"):
        model = AlignSeg(3, image_encoder=small_resnet(), decoder_channels=8,
                         dtype="mixed_bfloat16")
    assert model.backbone.image_encoder.dtype_policy.name == "float32"
    assert model.backbone.get_layer("rcb1a").compute_dtype == "bfloat16"


def test_a_keras_hub_encoder_follows_the_policy_of_the_loading_process(tmp_path):
    model = AlignSeg(3, image_encoder=small_resnet(), decoder_channels=8)
    model.save_to_preset(str(tmp_path / "preset"))
    mixed = AlignSeg.from_preset(str(tmp_path / "preset"), dtype="mixed_bfloat16")
    layers = mixed.backbone.image_encoder._flatten_layers(include_self=False)
    assert {layer.dtype_policy.name for layer in layers if layer.weights} == {"mixed_bfloat16"}
    mixed.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras")  # in float32
    assert {layer.dtype_policy.name for layer in loaded._flatten_layers()} == {"float32"}


def test_a_fixed_size_encoder_gives_the_model_its_image_shape():
    model = AlignSeg(3, image_encoder=small_mit(), decoder_channels=8)  # no image_shape
    assert model.image_shape == (64, 64, 3)
    assert model.predict(IMAGES, verbose=0).shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"takes images of 64x64 .* shape \(1, 70, 90, 3\)"):
        model.predict(np.zeros((1, 70, 90, 3), "uint8"), verbose=0)


def test_a_keras_hub_presets_image_converter_sets_the_normalisation(tmp_path):
    # A preset fine-tuned on images in -1..1: x / 127.5 - 1 is (x - 127.5) / 127.5.
    directory = str(tmp_path / "preset")
    small_resnet().save_to_preset(directory)
    model = AlignSeg(3, backbone=directory, decoder_channels=8)
    assert model.normalization["mean"] == list(encoders.IMAGENET_RGB["mean"])  # none saved
    keras_hub.layers.ResNetImageConverter(scale=1 / 127.5, offset=-1.0).save_to_preset(directory)
    model = AlignSeg(3, backbone=directory, decoder_channels=8)
    np.testing.assert_allclose(model.normalization["mean"], [127.5] * 3, rtol=1e-12)
    np.testing.assert_allclose(model.normalization["std"], [127.5] * 3, rtol=1e-12)
    assert model.normalization["bgr"] is False
    # Per channel, as ImageNet's mean and std (0..1) become keras-hub's scale and offset.
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    converter = keras_hub.layers.ResNetImageConverter(scale=list(1 / (255 * std)),
                                                      offset=list(-mean / std))
    converter.save_to_preset(directory)
    model = AlignSeg(3, backbone=directory, decoder_channels=8)
    np.testing.assert_allclose(model.normalization["mean"], 255 * mean, rtol=1e-12)
    np.testing.assert_allclose(model.normalization["std"], 255 * std, rtol=1e-12)
    x = IMAGES.astype("float32")
    np.testing.assert_allclose(np.asarray(model.image_converter(x)), np.asarray(converter(x)),
                               rtol=1e-5, atol=1e-5)  # float32 rounding of values up to 2.6


def test_a_preset_whose_loader_has_no_image_converter_keeps_the_default(monkeypatch):
    # keras-hub's timm and transformers loaders return None for some models (DINOv2).
    monkeypatch.setattr(keras_hub.layers.ImageConverter, "from_preset", lambda preset: None)
    assert encoders.keras_hub_input_convention("hf://some/model") is None


def test_a_fixed_size_model_is_frozen_and_exported_at_its_size(tmp_path):
    # Traced for images of any size, MiT's patch embedding failed inside keras-hub
    # (`None * None`): the frozen graph and every export trace the model's own size.
    import io

    import tensorflow as tf
    from PIL import Image

    from alignseg_keras.export import export_model
    from alignseg_keras.export_test import assert_logits_close
    from alignseg_keras.export_test import litert_logits
    from alignseg_keras.frozen_inference import FrozenInferenceModel

    model = AlignSeg(3, image_encoder=small_mit(), decoder_channels=8)
    expected = np.asarray(model.predict(IMAGES, verbose=0))
    frozen = FrozenInferenceModel(model)
    assert frozen.image_size == (64, 64)
    assert_logits_close(frozen.predict_on_batch(IMAGES), expected)
    with pytest.raises(ValueError, match=r"takes images of 64x64 .* shape \(1, 32, 64, 3\)"):
        frozen.predict_on_batch(np.zeros((1, 32, 64, 3), "uint8"))

    export_model(model, tmp_path / "served" / "1", format="saved_model")
    signatures = tf.saved_model.load(str(tmp_path / "served" / "1")).signatures
    probabilities = signatures["serving_default"](images=tf.constant(IMAGES))["probabilities"]
    assert_logits_close(probabilities.numpy(), tf.nn.softmax(expected).numpy())

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    labels = signatures["encoded_labels"](encoded_images=tf.constant([png(IMAGES[0])]))["labels"]
    np.testing.assert_array_equal(labels.numpy(), tf.argmax(probabilities, -1).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)node images.*\[1,32,64,3\] is not compatible with expected shape \[\?,64,64,3\]"):
        signatures["encoded_labels"](encoded_images=tf.constant([png(IMAGES[0, :32])]))

    export_model(model, tmp_path / "alignseg.tflite", format="litert")
    assert_logits_close(litert_logits(tmp_path / "alignseg.tflite", IMAGES.astype("float32")), expected)


def test_encoder_names_that_keras_hub_cannot_give_are_named(monkeypatch):
    # A typo failed with keras-hub's "a built-in preset identifier like 'bert_base_en'";
    # a preset that cannot be downloaded with requests' ConnectionError traceback.
    with pytest.raises(ValueError, match=r"'resnet_50_imagenett' is neither .*did you mean "
                                         r"resnet_50_imagenet"):
        encoders.keras_hub_encoder("resnet_50_imagenett")
    requests = pytest.importorskip("requests")

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='api.kaggle.com')")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(ValueError, match=r"The keras-hub preset 'resnet_50_imagenet' could not be "
                                         r"downloaded or read \(HTTPSConnectionPool.*Without a network"):
        encoders.keras_hub_encoder("resnet_50_imagenet")
