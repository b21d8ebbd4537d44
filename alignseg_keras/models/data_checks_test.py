"""Bad data given to AlignSeg.fit/evaluate/predict (and their *_on_batch) as arrays, generators
and PyDatasets."""

import warnings

import keras
import numpy as np
import pytest

from alignseg_keras.inference import predict_multiscale
from alignseg_keras.inference import predict_sliding
from alignseg_keras.inference import predict_whole
from alignseg_keras.testing import tiny_alignseg

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (4, 32, 40, 3)).astype("uint8")
MASKS = RNG.integers(0, 3, (4, 32, 40)).astype("int32")
NAN_IMAGES = IMAGES.astype("float32")
NAN_IMAGES[2, 5, 6, 1] = np.nan

# Each bad mask array and the words its error must contain.
BAD_MASKS = {
    "cityscapes_label_ids": (MASKS + 24, r"\[24, 25, 26\] outside \[0, 3\).*num_classes=3"),
    "minus_one": (np.where(MASKS == 0, -1, MASKS), r"\[-1\] outside .*mark unlabelled pixels 255, or"),
    "divided_by_255": (MASKS / 255.0, "fractional values.*divided by 255"),
    "swapped": (np.swapaxes(MASKS, 1, 2), "height and width swapped"),
}


@pytest.fixture(scope="module")
def model():
    model = tiny_alignseg(num_classes=3)
    model.compile()
    return model


def trainable_weights(model):
    return [np.array(weight) for weight in model.trainable_weights]


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_fit_and_evaluate_refuse_bad_mask_arrays_before_training(model, case):
    masks, message = BAD_MASKS[case]
    before = trainable_weights(model)
    with pytest.raises(ValueError, match=message):
        model.fit(IMAGES, masks, batch_size=2, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.evaluate(IMAGES, masks, batch_size=2, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.fit(IMAGES, MASKS, validation_data=(IMAGES, masks), verbose=0)
    with pytest.raises(ValueError, match=message):
        model.train_on_batch(IMAGES, masks)
    with pytest.raises(ValueError, match=message):
        model.test_on_batch(IMAGES, masks)
    for old, new in zip(before, trainable_weights(model)):
        np.testing.assert_array_equal(old, new)


def test_the_ignore_label_follows_keras_sparse_cross_entropy():
    # With Keras' own loss, 255 passed the check and failed inside TensorFlow's
    # SparseSoftmaxCrossEntropyWithLogits.
    import tensorflow as tf

    model = tiny_alignseg(num_classes=3)
    masks = MASKS.copy()
    masks[:, :4] = 255
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert model.ignore_index is None
    message = r"\[255\] outside \[0, 3\).*below 3\. .*give the loss an ignore label"
    with pytest.raises(ValueError, match=message):
        model.fit(IMAGES, masks, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, masks)).batch(2)
    with pytest.raises(ValueError, match=message):
        model.fit(dataset, verbose=0)
    for by_name in ("sparse_categorical_crossentropy", keras.losses.sparse_categorical_crossentropy):
        model.compile(loss=by_name)
        assert model.ignore_index is None
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    assert model.ignore_index == 255
    model.evaluate(IMAGES, masks, verbose=0)  # accepted, and Keras ignores it
    assert model._compile_config.config["weighted_metrics"][0].ignore_index == 255


def test_generators_and_py_datasets_are_checked_batch_by_batch(model):
    masks, message = BAD_MASKS["cityscapes_label_ids"]

    def batches():
        yield IMAGES[:2], MASKS[:2]
        yield IMAGES[2:], masks[2:]

    with pytest.raises(ValueError, match=message):
        model.fit(batches(), steps_per_epoch=2, verbose=0)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return NAN_IMAGES[2 * index : 2 * index + 2], MASKS[2 * index : 2 * index + 2]

    with pytest.raises(ValueError, match=r"NaN or infinite value\(s\), the first in image 0"):
        model.fit(Batches(), verbose=0)


def test_non_finite_pixels_are_refused_everywhere(model):
    message = r"1 NaN or infinite value\(s\), the first in image 2"
    with pytest.raises(ValueError, match=message):
        model.fit(NAN_IMAGES, MASKS, batch_size=2, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.evaluate(NAN_IMAGES, MASKS, verbose=0)
    with pytest.raises(ValueError, match=message):
        model.predict(NAN_IMAGES, verbose=0)
    before = trainable_weights(model)
    # One NaN pixel in a train_on_batch made every weight of conv1 NaN.
    for call in (lambda: model.train_on_batch(NAN_IMAGES, MASKS),
                 lambda: model.train_on_batch({"images": NAN_IMAGES}, MASKS),
                 lambda: model.test_on_batch(NAN_IMAGES, MASKS),
                 lambda: model.predict_on_batch(NAN_IMAGES)):
        with pytest.raises(ValueError, match=message):
            call()
    for old, new in zip(before, trainable_weights(model)):
        np.testing.assert_array_equal(old, new)
    inf_images = NAN_IMAGES.copy()
    inf_images[2] = np.where(np.isnan(inf_images[2]), np.inf, inf_images[2])
    for predict in (predict_whole, lambda m, x: predict_sliding(m, x, 16), predict_multiscale):
        with pytest.raises(ValueError, match=message):
            predict(model, inf_images)


def test_images_of_a_dtype_without_rgb_values_are_refused_everywhere(model):
    # Booleans (masks given as images), complex numbers and int8 trained and predicted
    # without a word; text failed inside Keras ("Invalid dtype: str672").
    for images, message in [(IMAGES > 128, "dtype bool: booleans"),
                            (IMAGES.astype("complex64"), "dtype complex64: complex numbers"),
                            ((IMAGES.astype("int16") - 128).astype("int8"), "dtype int8: int8"),
                            (IMAGES.astype(str), "no plain numbers")]:
        before = trainable_weights(model)
        calls = [lambda: model.fit(images, MASKS, batch_size=2, verbose=0),
                 lambda: model.evaluate(images, MASKS, verbose=0),
                 lambda: model.predict(images, verbose=0),
                 lambda: model.train_on_batch(images, MASKS),
                 lambda: model.predict_on_batch(images),
                 lambda: predict_whole(model, images),
                 lambda: predict_sliding(model, images, 16)]
        if images.dtype.kind != "U":  # the model's own call (text is no tensor)
            calls.append(lambda: model(keras.ops.convert_to_tensor(images)))
        for call in calls:
            with pytest.raises(ValueError, match=message):
                call()
        for old, new in zip(before, trainable_weights(model)):
            np.testing.assert_array_equal(old, new)


def test_fit_on_no_images_is_refused(model):
    before = trainable_weights(model)
    with pytest.raises(ValueError, match="no training batches"):
        model.fit(IMAGES[:0], MASKS[:0], verbose=0)
    # Keras' own split refuses to leave no training sample, naming the argument.
    with pytest.raises(ValueError, match="not sufficient to split.*validation_split=0.5"):
        model.fit(IMAGES[:1], MASKS[:1], validation_split=0.5, verbose=0)
    for old, new in zip(before, trainable_weights(model)):
        np.testing.assert_array_equal(old, new)


def test_fit_on_a_pipeline_that_gives_no_batch_is_refused(model):
    import tensorflow as tf

    # One example, batches of two with the remainder dropped: no batch, and a length
    # that Keras cannot count beforehand.
    pipeline = tf.data.Dataset.from_tensor_slices((IMAGES[:1], MASKS[:1])).filter(
        lambda image, mask: True).batch(2, drop_remainder=True)
    ended = []
    epochs = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ended.append(epoch))
    # Keras' torch trainer refuses it itself, building its step from data that gives none.
    message = "has no training batches: the data gave none" if keras.backend.backend() != "torch" else ""
    with pytest.raises(ValueError, match=message):
        model.fit(pipeline, steps_per_epoch=3, epochs=3, callbacks=[epochs], verbose=0)
    assert ended == []  # refused at the end of the first epoch, before the other callbacks'
    # A fit with every epoch done (as BackupAndRestore resumes a finished run) begins no
    # epoch, and is not refused.
    one_batch = tf.data.Dataset.from_tensor_slices((IMAGES[:2], MASKS[:2])).batch(2)
    assert model.fit(one_batch, steps_per_epoch=1, epochs=2, initial_epoch=2, verbose=0)


@pytest.mark.parametrize("shape", [(0, 32, 40, 3), (2, 0, 0, 3), (1, 5, 0, 3)])
def test_empty_inputs_give_empty_results(model, shape):
    images = np.zeros(shape, "uint8")
    logits = model.predict(images, verbose=0)
    assert logits.shape == shape[:3] + (3,) and logits.dtype == np.float32
    for predict in (predict_whole, lambda m, x: predict_sliding(m, x, 16), predict_multiscale):
        assert predict(model, images).shape == shape[:3] + (3,)
    assert predict_whole(model, images[0] if shape[0] else images).ndim in (3, 4)


def test_a_second_fit_may_drop_the_mask_channel_axis_and_warns_past_a_fixed_schedule():
    model = tiny_alignseg(num_classes=3)
    model.compile(total_steps=2)  # fixed: the second fit reuses the traced step
    first = model.fit(IMAGES, MASKS[..., None], batch_size=2, verbose=0)
    with pytest.warns(UserWarning, match="schedule ended at step 2.*larger `total_steps`"):
        second = model.fit(IMAGES, MASKS, batch_size=2, verbose=0)
    assert np.isfinite(first.history["loss"] + second.history["loss"]).all()


def scale_warnings(call, where=None):
    """The scale warnings `call()` gives, each counted (no filter deduplicates them);
    with a list `where`, the files they point at are appended to it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    kinds = ("(0..1 images?)", "(0..255 images?)", "(16-bit images", "(images already normalised")
    said = [w for w in caught if any(kind in str(w.message) for kind in kinds)]
    if where is not None:
        where.extend(w.filename for w in said)
    return [str(w.message) for w in said]


def test_images_in_another_scale_are_warned_about_once_a_call(model):
    unit_images = (IMAGES / 255.0).astype("float32")

    def two_batches(masks=True):
        for start in (0, 2):
            batch = unit_images[start : start + 2]
            yield (batch, MASKS[start : start + 2]) if masks else (batch,)

    class UnitBatches(keras.utils.PyDataset):  # read by two of Keras' worker threads
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return unit_images[2 * index : 2 * index + 2], MASKS[2 * index : 2 * index + 2]

    calls = {
        "predict": lambda: model.predict(unit_images, batch_size=2, verbose=0),
        "evaluate a PyDataset's workers": lambda: model.evaluate(UnitBatches(workers=2), verbose=0),
        "evaluate": lambda: model.evaluate(unit_images, MASKS, batch_size=2, verbose=0),
        "evaluate a generator": lambda: model.evaluate(two_batches(), steps=2, verbose=0),
        "predict a generator": lambda: model.predict(two_batches(False), steps=2, verbose=0),
        "predict_whole": lambda: predict_whole(model, unit_images),
        "predict_sliding": lambda: predict_sliding(model, unit_images, 16),
    }
    for name, call in calls.items():
        where = []
        said = scale_warnings(call, where)
        assert len(said) == 1 and "(0..1 images?)" in said[0], (name, said)
        # The user's line, not the library's nor Keras' (a generator's batches are read by
        # Keras' loop; on TensorFlow in a tf.data thread, with no user's line on the stack).
        assert where == [__file__], (name, where)
    for call in (lambda: model.predict(IMAGES, verbose=0), lambda: predict_whole(model, IMAGES),
                 # a loop's batches: warned about by the loop (the inference functions)
                 lambda: model.predict_on_batch(unit_images),
                 lambda: model.test_on_batch(unit_images, MASKS)):
        assert scale_warnings(call) == []
    assert scale_warnings(lambda: model.predict(IMAGES * 0, verbose=0)) == []


def test_a_fit_and_its_validation_data_are_warned_about_once():
    model = tiny_alignseg(num_classes=3)
    model.compile()
    unit_images = (IMAGES / 255.0).astype("float32")
    said = scale_warnings(lambda: model.fit(unit_images, MASKS, batch_size=2, verbose=0,
                                            validation_data=(unit_images, MASKS)))
    assert len(said) == 1


def test_images_already_normalised_or_of_16_bits_are_warned_about_once_a_call(model):
    normalised = (IMAGES - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    said = scale_warnings(lambda: model.predict(normalised.astype("float32"), verbose=0))
    assert len(said) == 1 and "(images already normalised" in said[0], said
    said = scale_warnings(lambda: model.evaluate(IMAGES.astype("uint16") * 257, MASKS, verbose=0))
    assert len(said) == 1 and "(16-bit images, 0..65535?)" in said[0], said


def test_a_model_of_0_to_1_images_warns_about_0_to_255_ones():
    model = tiny_alignseg(num_classes=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    said = scale_warnings(lambda: model.predict(IMAGES, verbose=0))
    assert len(said) == 1 and "(0..255 images?)" in said[0] and "images / 255" in said[0]
    assert scale_warnings(lambda: model.predict(IMAGES / 255.0, verbose=0)) == []


def test_a_refused_batch_of_a_pydataset_leaves_the_model_and_its_weights(model):
    # On JAX, Keras' loops take the variables' values out before their first step and
    # put them back only from a step's results: a refused batch (prefetched, so it
    # surfaces at the first step) left every weight None, the trained weights lost.
    class Batches(keras.utils.PyDataset):
        def __init__(self, images, masks, bad_first, **kwargs):
            super().__init__(**kwargs)
            self.images, self.masks, self.bad_first = images, masks, bad_first

        def __len__(self):
            return 2

        def __getitem__(self, index):
            part = slice(2 * index, 2 * index + 2)
            bad = index == (0 if self.bad_first else 1)
            images = IMAGES[part].astype("float32")
            if bad and self.masks is None:
                images[0, 0, 0, 0] = np.nan
            masks = np.where(MASKS[part] == 0, 9, MASKS[part]) if bad else MASKS[part]
            return (images, masks) if self.masks is not None else (images,)

    model.fit(IMAGES, MASKS, batch_size=2, verbose=0)  # trained weights to keep
    expected = model.predict(IMAGES, verbose=0)
    for bad_first in (True, False):
        weights = [np.array(weight) for weight in model.weights]
        calls = (lambda: model.evaluate(Batches(IMAGES, MASKS, bad_first), verbose=0),
                 lambda: model.predict(Batches(IMAGES, None, bad_first), verbose=0),
                 lambda: model.fit(Batches(IMAGES, MASKS, bad_first), shuffle=False, verbose=0))
        for call in calls:
            with pytest.raises(ValueError, match=r"outside \[0, 3\)|NaN or infinite"):
                call()
            assert all(weight is not None for weight in model.get_weights())
        if bad_first:  # no step ran: every weight as it was
            for old, new in zip(weights, model.weights):
                np.testing.assert_array_equal(old, np.array(new))
            np.testing.assert_array_equal(model.predict(IMAGES, verbose=0), expected)
        assert np.isfinite(model.predict(IMAGES, verbose=0)).all()
    model.fit(IMAGES, MASKS, batch_size=2, verbose=0)  # and it trains on
