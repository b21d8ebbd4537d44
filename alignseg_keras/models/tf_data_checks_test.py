"""Bad batches in tf.data pipelines: refused in the pipeline, with a clear ValueError."""

import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.models.data_checks_test import BAD_MASKS
from alignseg_keras.models.data_checks_test import IMAGES
from alignseg_keras.models.data_checks_test import MASKS
from alignseg_keras.models.data_checks_test import NAN_IMAGES
from alignseg_keras.models.tf_data_checks import checked_dataset
from alignseg_keras.models.tf_data_checks import data_errors_as_value_errors
from alignseg_keras.testing import tiny_alignseg


def batches(images, masks=None, batch_size=2):
    elements = images if masks is None else (images, masks)
    return tf.data.Dataset.from_tensor_slices(elements).batch(batch_size)


def read_all(dataset):
    with data_errors_as_value_errors():
        return list(dataset)


def test_good_batches_pass_unchanged_with_squeezed_masks():
    dataset = checked_dataset(batches(IMAGES, MASKS[..., None] * 1.0), num_classes=3)
    assert dataset.element_spec[1].shape.as_list() == [None, 32, 40]
    images, masks = zip(*read_all(dataset))
    np.testing.assert_array_equal(np.concatenate(images), IMAGES)
    np.testing.assert_array_equal(np.concatenate(masks), MASKS)
    only_images = read_all(checked_dataset(batches(IMAGES)))
    np.testing.assert_array_equal(np.concatenate(only_images), IMAGES)


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_bad_masks_are_refused_as_they_are_read(case):
    masks, message = BAD_MASKS[case]
    if case != "swapped":  # the second batch is the bad one: every batch is checked
        masks = np.concatenate([MASKS[:2].astype(masks.dtype), masks[2:]])
    with pytest.raises(ValueError, match=message):
        read_all(checked_dataset(batches(IMAGES, masks), num_classes=3))


def test_mask_size_is_checked_when_shapes_are_dynamic():
    def generator():
        yield IMAGES[0], MASKS[0]
        yield IMAGES[0], MASKS[0].T

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, None], tf.int32))
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature).batch(1)
    with pytest.raises(ValueError, match="swapped"):
        read_all(checked_dataset(dataset, num_classes=3))


def test_other_pipeline_errors_pass_through():
    def fail(images):
        raise ValueError("a user's own pipeline error")

    dataset = batches(IMAGES).map(lambda x: tf.numpy_function(fail, [x], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="a user's own pipeline error"):
        read_all(dataset)


def test_fit_refuses_a_bad_pipeline_under_xla():
    # The check runs in tf.data, so XLA (where tf.debugging asserts are no-ops)
    # and graph mode (the evaluate test below) behave alike.
    model = tiny_alignseg(num_classes=3)
    model.compile(jit_compile=True)
    before = [np.array(weight) for weight in model.trainable_weights]
    masks, message = BAD_MASKS["cityscapes_label_ids"]
    with pytest.raises(ValueError, match=message):
        model.fit(batches(IMAGES, masks), verbose=0)
    # No training step: in graph mode the weight decay, which does not wait for
    # the data, may have scaled the weights by 1 - lr * decay = 1 - 1e-5.
    for old, new in zip(before, model.trainable_weights):
        np.testing.assert_allclose(np.array(new), old, rtol=2e-5, atol=1e-12)


def test_evaluate_and_predict_refuse_non_finite_pipelines():
    model = tiny_alignseg(num_classes=3)
    model.compile()
    message = r"NaN or infinite value\(s\), the first in image 0"
    with pytest.raises(ValueError, match=message):
        model.evaluate(batches(NAN_IMAGES, MASKS).skip(1), verbose=0)
    with pytest.raises(ValueError, match=message):
        model.predict(batches(NAN_IMAGES).skip(1), verbose=0)


def test_a_file_the_reader_refuses_is_its_plain_value_error(tmp_path):
    from PIL import Image

    from alignseg_keras import data

    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(tmp_path / "a_mask.png")
    files = data.from_files([tmp_path / "a.png"], [tmp_path / "a_mask.png"], num_classes=3)
    with pytest.raises(ValueError, match=r"a_mask.png' is 30x48 \(HxW\) but its image"):
        read_all(files)
    # An error of TensorFlow's own is left as it is.
    with pytest.raises(tf.errors.InvalidArgumentError):
        read_all(tf.data.Dataset.from_tensors(tf.constant([1.0])).map(
            lambda x: tf.debugging.check_numerics(x / 0.0, "a ValueError: in TensorFlow")))


def _decoded_pairs(tmp_path, channels_per_file, **decode_options):
    """A batched dataset of PNG files decoded by `tf.io.decode_image`, whose static
    image shape is unknown (`expand_animations=True`, the default: unknown rank)."""
    from PIL import Image

    paths = []
    for index, channels in enumerate(channels_per_file):
        pixels = np.full((32, 40, channels), 50 * index, np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(tmp_path / f"{index}.png")
        Image.fromarray(MASKS[0].astype(np.uint8)).save(tmp_path / f"{index}_mask.png")
        paths.append((str(tmp_path / f"{index}.png"), str(tmp_path / f"{index}_mask.png")))

    def load(image_path, mask_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), **decode_options)
        return image, tf.io.decode_png(tf.io.read_file(mask_path))[..., 0]

    images, masks = (list(column) for column in zip(*paths))
    return tf.data.Dataset.from_tensor_slices((images, masks)).map(load).batch(1)


def test_images_of_unknown_shape_are_checked_as_they_are_read(tmp_path):
    good = checked_dataset(_decoded_pairs(tmp_path, [3, 3]), num_classes=3)
    assert good.element_spec[0].shape.as_list() == [None, None, None, 3]
    assert len(read_all(good)) == 2
    rgba = checked_dataset(_decoded_pairs(tmp_path, [3, 4], expand_animations=False), num_classes=3)
    with pytest.raises(ValueError, match=r"RGB images with 3 channels; received an input of shape "
                                         r"\(1, 32, 40, 4\) with 4 channels"):
        read_all(rgba)


def test_fit_takes_images_of_unknown_rank(tmp_path):
    model = tiny_alignseg(num_classes=3)
    model.compile(total_steps=2)
    history = model.fit(_decoded_pairs(tmp_path, [3, 3]), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_a_pipeline_in_another_scale_is_warned_about_once():
    from alignseg_keras.checks import ScaleWarning
    from alignseg_keras.models.data_checks_test import scale_warnings

    imagenet = ScaleWarning((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    unit_images = (IMAGES / 255.0).astype("float32")
    where = []  # the pipeline's Python runs in a TensorFlow thread: the line that made it
    said = scale_warnings(
        lambda: read_all(checked_dataset(batches(unit_images), scale_warning=imagenet)), where
    )
    assert len(said) == 1 and said[0].startswith("The largest value of a batch of images is")
    assert where == [__file__]
    fresh = ScaleWarning(imagenet.mean, imagenet.std)
    assert scale_warnings(lambda: read_all(checked_dataset(batches(IMAGES), scale_warning=fresh))) == []
    normalised = batches((IMAGES / 127.5 - 1).astype("float32"))  # -1..1, largest 1 as 0..1
    said = scale_warnings(lambda: read_all(checked_dataset(normalised, scale_warning=fresh)))
    assert len(said) == 1 and "(images already normalised, or scaled to -1..1?)" in said[0]
    sixteen_bit = batches(IMAGES.astype("uint16") * 257)
    said = scale_warnings(lambda: read_all(checked_dataset(sixteen_bit, scale_warning=ScaleWarning(
        imagenet.mean, imagenet.std))))
    assert len(said) == 1 and "is 65535 (16-bit images" in said[0], said
    model = tiny_alignseg(num_classes=3)
    model.compile()
    for call in (lambda: model.predict(batches(unit_images), verbose=0),
                 lambda: model.evaluate(batches(unit_images, MASKS), verbose=0)):
        where = []
        assert len(scale_warnings(call, where)) == 1 and where == [__file__]


def test_a_pipeline_of_images_without_rgb_values_is_refused_when_it_is_given():
    model = tiny_alignseg(num_classes=3)
    model.compile()
    for images, message in [(IMAGES > 128, "The images of the dataset are of dtype bool"),
                            (IMAGES.astype(str), "dtype string: no plain numbers")]:
        with pytest.raises(ValueError, match=message):
            checked_dataset(batches(images))
        with pytest.raises(ValueError, match=message):
            model.fit(batches(images, MASKS), verbose=0)
