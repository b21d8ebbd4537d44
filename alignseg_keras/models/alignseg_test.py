import json
import warnings

import keras
import numpy as np
import pytest

from alignseg_keras import AlignSeg
from alignseg_keras import layers
from alignseg_keras.testing import tiny_alignseg


def tiny_model(**kwargs):
    return tiny_alignseg(num_classes=4, seed=None, **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("height,width", [(32, 32), (37, 50), (65, 33), (1, 1), (95, 129)])
def test_logits_at_input_size_for_any_size(model, height, width):
    images = np.random.randint(0, 256, (2, height, width, 3)).astype("uint8")
    logits = model.predict(images, verbose=0)
    assert logits.shape == (2, height, width, 4)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_uint8_and_float_inputs_agree(model):
    images = np.random.randint(0, 256, (1, 40, 48, 3)).astype("uint8")
    np.testing.assert_allclose(
        np.asarray(model(images)), np.asarray(model(images.astype("float32"))), atol=1e-5
    )


def test_training_returns_auxiliary_logits_and_prediction_does_not(model):
    images = np.zeros((1, 40, 48, 3), "float32")
    train_out = model(images, training=True)
    assert set(train_out) == {"logits", "aux_logits"}
    assert tuple(train_out["aux_logits"].shape) == (1, 40, 48, 4)
    assert not isinstance(model(images), dict)
    assert not isinstance(model.predict(images, verbose=0), dict)
    plain = tiny_model(deep_supervision=False)
    assert tuple(plain(images, training=True).shape) == (1, 40, 48, 4)


def test_wrong_channels_raise_a_clear_error(model):
    with pytest.raises(ValueError, match="channels"):
        model(np.zeros((1, 32, 32, 4), "float32"))
    with pytest.raises(ValueError, match="channels"):
        model.predict(np.zeros((1, 32, 32, 1), "float32"), verbose=0)
    with pytest.raises(ValueError, match="3 channels"):
        tiny_model(image_shape=(None, None, 1))


def test_images_in_a_dict_keyed_by_the_input_name(model):
    images = np.random.default_rng(0).uniform(0, 255, (1, 32, 40, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict({"images": images}, verbose=0),
                                  model.predict(images, verbose=0))
    images[0, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict({"images": images}, verbose=0)
    with pytest.raises(ValueError, match=r"a dict \{'images': images\}; received a dict with the keys \['x'\]"):
        model({"x": images})
    # Called directly, as `predict`: one NaN pixel made every logit of the image NaN.
    for given in (images, {"images": images}):
        with pytest.raises(ValueError, match=r"`images` contains 1 NaN or infinite value\(s\), "
                                             r"the first in image 0"):
            model(given)
    assert model(np.nan_to_num(images)).shape == (1, 32, 40, model.num_classes)


def test_the_padding_multiple_is_checked():
    # -32 failed inside TensorFlow's Pad at predict; 32.5 padded to 32.
    for bad in (-32, 32.5, "32x", True):
        with pytest.raises(ValueError, match=r"`pad_to_multiple` must be a positive int"):
            tiny_model(pad_to_multiple=bad)
    for whole in (np.int64(16), 16.0, "16"):  # as files of earlier versions may hold it
        assert tiny_model(pad_to_multiple=whole).pad_to_multiple == 16
    assert tiny_model(pad_to_multiple=0).pad_to_multiple == 0


def test_offset_model_exposes_every_alignment_module(model):
    offsets = model.offset_model()(np.zeros((1, 64, 64, 3), "float32"))
    assert {k: tuple(v.shape) for k, v in offsets.items()} == {
        "align_fa2": (1, 16, 16, 4),
        "align_fa3": (1, 16, 16, 4),
        "align_fa4": (1, 16, 16, 4),
        "align_fa5": (1, 16, 16, 4),
        "align_cm": (1, 2, 2, 2),
    }


def test_decoder_wiring_uses_every_module(model):
    names = {layer.name for layer in model.backbone.layers}
    for name in ["rcb1a", "rcb2a", "rcb2b", "rcb3a", "rcb3b", "rcb4a", "rcb4b", "rcb5a", "rcb5b",
                 "align_fa2", "align_fa3", "align_fa4", "align_fa5", "align_cm"]:
        assert name in names
    assert isinstance(model.backbone.get_layer("align_cm"), layers.AlignCM)
    assert {"head", "auxiliary_head", "alignseg_backbone"} <= {layer.name for layer in model.layers}


def test_normalization_defaults_follow_the_backbone():
    assert tiny_model().normalization["bgr"] is False
    custom = tiny_model(mean=(0, 0, 0), std=(255, 255, 255))
    assert custom.normalization["std"] == [255.0, 255.0, 255.0]


def test_keras_round_trip(tmp_path):
    model = tiny_model(context_merge="concat", alignment="official", activation="leaky_relu")
    rng = np.random.default_rng(0)
    for weight in model.weights:  # non-trivial weights and BN statistics
        value = rng.normal(scale=0.05, size=weight.shape) + ("variance" in weight.path)
        weight.assign(value.astype("float32"))
    images = rng.integers(0, 256, (2, 45, 38, 3)).astype("uint8")
    expected = model.predict(images, verbose=0)
    path = tmp_path / "alignseg.keras"
    model.save(path)
    restored = keras.saving.load_model(path)  # no custom_objects
    assert isinstance(restored, AlignSeg)
    # Equal as JSON (the file stores tuples as lists).
    assert json.dumps(restored.get_config()) == json.dumps(model.get_config())
    np.testing.assert_array_equal(restored.predict(images, verbose=0), expected)


def test_keras_round_trip_with_custom_backbone(tmp_path):
    inputs = keras.Input((None, None, 3))
    outs = [keras.layers.Conv2D(8, 3, strides=s, padding="same")(inputs) for s in (4, 8, 16, 32)]
    model = AlignSeg(3, backbone=keras.Model(inputs, outs), decoder_channels=8)
    images = np.random.rand(1, 64, 64, 3).astype("float32") * 255
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "custom.keras")
    restored = keras.saving.load_model(tmp_path / "custom.keras")
    np.testing.assert_allclose(restored.predict(images, verbose=0), expected, atol=1e-6)


def test_resnet101_has_the_authors_parameter_count():
    model = AlignSeg(19, backbone="resnet101")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # The authors' model: 66,846,310 weights and biases (Keras' ResNet-101 has
    # conv biases and a 7x7 stem, hence a small difference).
    assert abs(trainable - 66_846_310) / 66_846_310 < 0.01
    deep_stem = AlignSeg(19, backbone="resnet101_deepstem", pad_to_multiple=None)
    assert sum(int(np.prod(w.shape)) for w in deep_stem.trainable_weights) == 66_846_310


def test_an_automatic_sync_batchnorm_is_saved_as_automatic(monkeypatch, tmp_path):
    # Saved as the resolved True, a model built inside a multi-replica strategy loaded
    # synchronised on one device, and failed its first training step on JAX and torch.
    from alignseg_keras import distribute

    def synchronized(model):
        return {layer.synchronized for layer in model._flatten_layers()
                if isinstance(layer, keras.layers.BatchNormalization)}

    inputs = keras.Input((None, None, 3))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    outs = [keras.layers.Conv2D(8, 3, strides=s, padding="same")(x) for s in (4, 8, 16, 32)]
    encoder = keras.Model(inputs, outs)  # a functional encoder saves its layers' configs
    monkeypatch.setattr(distribute, "replicas_in_sync", lambda: 2)
    model = AlignSeg(3, backbone=encoder, decoder_channels=8)
    assert model.sync_batchnorm and synchronized(model) == {True}
    assert model.get_config()["sync_batchnorm"] is None
    model.save(tmp_path / "synced.keras")
    monkeypatch.undo()  # one device
    restored = keras.saving.load_model(tmp_path / "synced.keras")
    assert not restored.sync_batchnorm and synchronized(restored) == {False}
    explicit = AlignSeg.from_config({**model.get_config(), "sync_batchnorm": True})
    assert synchronized(explicit) == {True}


def test_nested_in_another_model_without_deep_supervision_only():
    # With deep supervision the outer model's `predict` failed inside Keras ("Output with
    # path `` is not connected to `inputs`"); with this spec returning the logits alone,
    # its `fit` trained the auxiliary head alone (the first of the flattened dict).
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    labels = np.random.default_rng(1).integers(0, 3, (2, 32, 32)).astype("int32")
    inputs = keras.Input((32, 32, 3))
    with pytest.raises(ValueError, match="has deep supervision .* deep_supervision=False"):
        tiny_alignseg(num_classes=3)(inputs)
    model = tiny_alignseg(num_classes=3, deep_supervision=False)
    outer = keras.Model(inputs, keras.layers.Identity()(model(inputs)))
    np.testing.assert_array_equal(outer.predict(images, verbose=0),
                                  model.predict(images, verbose=0))
    # (Logits, not a Softmax layer: Keras' Softmax then cross-entropy fails on torch.)
    outer.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [np.asarray(weight) for weight in model.get_layer("head").weights]
    outer.fit(images, labels, epochs=1, verbose=0)
    assert any(not np.array_equal(np.asarray(weight), old)
               for weight, old in zip(model.get_layer("head").weights, before))


def test_settings_of_the_default_optimizer_given_with_another_are_warned_about():
    # `compile(optimizer="adam", learning_rate=1e-3)` trained at Adam's default rate, silently.
    model = tiny_alignseg(num_classes=3)
    with pytest.warns(UserWarning, match=r"learning_rate=0\.5, weight_decay=0\.3: these "
                                         r"configure the default SGD only"):
        model.compile(optimizer=keras.optimizers.Adam(), learning_rate=0.5, weight_decay=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(optimizer=keras.optimizers.Adam())
    assert not [w for w in caught if "default SGD" in str(w.message)]


def test_a_list_of_images_is_named():
    # Keras reads a list as one input per item: the message said "an input of shape None".
    image = np.zeros((1, 32, 32, 3), "uint8")
    with pytest.raises(ValueError, match=r"received 2 arrays \(a list or tuple\)\. Stack images of one size"):
        tiny_alignseg(num_classes=3).predict([image[0], image[0]], verbose=0)
