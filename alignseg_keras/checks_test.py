import warnings

import keras
import numpy as np
import pytest

from alignseg_keras.backbones.encoders import AUTHORS_BGR
from alignseg_keras.backbones.encoders import CAFFE_BGR
from alignseg_keras.backbones.encoders import IMAGENET_RGB
from alignseg_keras.checks import MAX_CLASSES
from alignseg_keras.checks import ScaleWarning
from alignseg_keras.checks import check_class_count
from alignseg_keras.checks import check_finite_images
from alignseg_keras.checks import check_image_dtype
from alignseg_keras.checks import check_masks
from alignseg_keras.checks import check_compiled_call
from alignseg_keras.checks import check_sample_weight
from alignseg_keras.checks import check_weights_may_change
from alignseg_keras.checks import onednn_weights_frozen
from alignseg_keras.checks import expected_image_range
from alignseg_keras.checks import squeeze_masks
from alignseg_keras.metrics import MeanIoU
from alignseg_keras.testing import tiny_alignseg


def test_class_counts():
    assert check_class_count(19) == 19
    assert check_class_count(np.int64(2)) == 2
    assert check_class_count(1, minimum=1) == 1
    with pytest.raises(ValueError, match="binary task .* needs num_classes=2"):
        check_class_count(1)
    with pytest.raises(ValueError, match="at least 2"):
        check_class_count(0)
    with pytest.raises(ValueError, match="must be an int"):
        check_class_count(2.5)
    assert check_class_count(MAX_CLASSES) == MAX_CLASSES
    with pytest.raises(ValueError, match=r"100000.* confusion matrix 75 GiB.*ADE20K-full"):
        check_class_count(100000)


def test_model_and_metric_refuse_bad_class_counts_before_allocating():
    with pytest.raises(ValueError, match="num_classes=2"):
        tiny_alignseg(num_classes=1)
    with pytest.raises(ValueError, match="more than 4096"):
        tiny_alignseg(num_classes=100000)
    with pytest.raises(ValueError, match="more than 4096"):
        MeanIoU(num_classes=100000)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_name_the_image(value):
    images = np.zeros((10, 4, 4, 3), "float32")
    check_finite_images(images)
    check_finite_images(np.zeros((2, 4, 4, 3), "uint8"))
    images[9, 1, 2, 0] = value
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\), the first in image 9"):
        check_finite_images(images)


def test_images_of_dtypes_that_are_not_numbers_are_left_to_the_shape_checks():
    import tensorflow as tf

    check_finite_images(tf.constant([["a"]]))  # TensorFlow's string dtype: no NaN to find
    check_finite_images(np.array([["a"]]))


def test_bfloat16_images_are_checked_too():
    # NumPy's kind of ml_dtypes' bfloat16 is "V": such images passed unchecked.
    import ml_dtypes
    import tensorflow as tf

    images = np.zeros((2, 4, 4, 3), ml_dtypes.bfloat16)
    images[1, 0, 0, 0] = np.nan
    for batch in (images, tf.constant(images)):
        with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\), the first in image 1"):
            check_finite_images(batch)
    check_finite_images(np.zeros((2, 4, 4, 3), ml_dtypes.bfloat16))


@pytest.mark.parametrize(
    "masks, message",
    [
        (np.full((2, 4, 6), 33), r"value\(s\) \[33\] outside \[0, 19\).*num_classes=19.*train ids"),
        (np.full((2, 4, 6), -1), r"\[-1\].*unlabelled pixels 255, or build"),
        (np.full((2, 4, 6, 1), 3 / 255.0), r"fractional values \[0.0117.*divided by 255"),
        (np.zeros((2, 6, 4)), r"\(2, 6, 4\) do not fit .*\(height and width swapped\?\)"),
        (np.zeros((2, 4, 6, 19)), r"\(2, 4, 6, 19\) do not fit .*\(one-hot masks\? give class ids"),
        (np.zeros((2, 4)), r"\(2, 4\) do not fit"),
        # Text masks (read from a CSV) crashed inside NumPy's comparison.
        (np.full((2, 4, 6), "3"), r"The masks are of dtype str32: expected class ids as integers "
                                  r"\(0..18, 255 ignored\)"),
        (np.full((2, 4, 6), 3 + 0j), r"dtype complex128"),
    ],
)
def test_bad_masks_name_value_class_count_and_fix(masks, message):
    with pytest.raises(ValueError, match=message):
        check_masks((2, 4, 6, 3), masks, num_classes=19)


def test_one_hot_masks_of_square_images_are_not_called_swapped():
    with pytest.raises(ValueError, match=r"\(one-hot masks\? give class ids") as error:
        check_masks((2, 5, 5, 3), np.zeros((2, 5, 5, 19)), num_classes=19)
    assert "swapped" not in str(error.value)


def test_good_masks_pass_and_lose_their_channel_axis():
    masks = np.array([0, 18, 255, 7] * 12, "float32").reshape(2, 4, 6, 1)
    check_masks((2, 4, 6, 3), masks, num_classes=19)
    check_masks((2, 4, 6, 3), np.full((2, 4, 6), -1), num_classes=19, ignore_index=-1)
    assert squeeze_masks(masks).shape == (2, 4, 6)
    assert squeeze_masks(masks[..., 0]).shape == (2, 4, 6)


def test_weights_that_onednn_assumes_frozen_refuse_training():
    name = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
    for value in ("1", "true", "TRUE", " True "):
        with pytest.raises(ValueError, match=f"{name}={value} is set: .* initial weights. Unset it to train"):
            check_weights_may_change("tensorflow", {name: value})
        check_weights_may_change("jax", {name: value})  # TensorFlow's switch, not read there
    for environment in ({}, {name: "0"}, {name: "false"}, {name: ""}):
        check_weights_may_change("tensorflow", environment)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's oneDNN switch")
def test_fit_and_train_on_batch_refuse_weights_assumed_frozen(monkeypatch):
    model = tiny_alignseg(num_classes=3)
    model.compile(total_steps=10, metrics=[])
    images = np.zeros((1, 32, 32, 3), "float32")
    masks = np.zeros((1, 32, 32), "int32")
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    for train in (lambda: model.train_on_batch(images, masks), lambda: model.fit(images, masks, verbose=0)):
        with pytest.raises(ValueError, match="TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 is set"):
            train()
    # Inference stays allowed: that is what the switch is for. Its function is only made,
    # not run: TensorFlow reads the switch once, at the process's first oneDNN convolution,
    # and every later test in this process would keep its convolutions' first kernels.
    model.make_predict_function(force=True)
    model.make_test_function(force=True)
    monkeypatch.delenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS")
    assert np.all(np.isfinite(model.train_on_batch(images, masks)))


# torchvision's ImageNet normalisation, for images in 0..1.
UNIT_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("convention, expected", [
    (IMAGENET_RGB, 255.0), (CAFFE_BGR, 255.0), (AUTHORS_BGR, 255.0),
    (dict(mean=(127.5,) * 3, std=(127.5,) * 3), 255.0),
    (UNIT_IMAGENET, 1.0), (dict(mean=(0.5,) * 3, std=(0.5,) * 3), 1.0),
    (dict(mean=(0.0,) * 3, std=(0.5,) * 3), 1.0),  # 0..1 images to 0..2
    (dict(mean=(0.0,) * 3, std=(1.0,) * 3), None),  # no normalisation: any scale
    (dict(mean=(-1.0,) * 3, std=(1.0,) * 3), None),
])
def test_the_scale_a_normalisation_takes(convention, expected):
    assert expected_image_range(convention["mean"], convention["std"]) == expected


def images_up_to(largest, dtype="float32"):
    images = np.zeros((3, 4, 5, 3), dtype)
    images[2, 3, 4, 1] = largest  # in the last image, as a chunked maximum must find it
    return images


def test_images_in_the_scale_normalised_pass_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for convention, largest, dtype in [
            (IMAGENET_RGB, 255, "uint8"), (IMAGENET_RGB, 1.01, "float32"),
            (IMAGENET_RGB, 0, "float32"),  # a black batch says nothing of its scale
            (CAFFE_BGR, 17.0, "float64"),
            (UNIT_IMAGENET, 1.0, "float32"), (UNIT_IMAGENET, 2.0, "float32"),  # overshoot
            (UNIT_IMAGENET, 1, "uint8"),
            (dict(mean=(0.0,) * 3, std=(1.0,) * 3), 255, "uint8"),
            (dict(mean=(0.0,) * 3, std=(1.0,) * 3), 0.5, "float32"),
        ]:
            ScaleWarning(convention["mean"], convention["std"])(images_up_to(largest, dtype))
        ScaleWarning(IMAGENET_RGB["mean"], IMAGENET_RGB["std"])(np.zeros((0, 4, 5, 3), "float32"))


def test_images_in_another_scale_are_warned_about_once():
    zero_to_one = ScaleWarning(IMAGENET_RGB["mean"], IMAGENET_RGB["std"])
    message = (r"largest value of `images` is 0\.75 \(0\.\.1 images\?\), but this model "
               r"normalises RGB values 0\.\.255 \(mean \[123\.675, 116\.28, 103\.53\].*"
               r"images \* 255")
    with pytest.warns(UserWarning, match=message):
        zero_to_one(images_up_to(0.75))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero_to_one(images_up_to(0.5))  # said once
    with pytest.warns(UserWarning, match="is 1 "):  # the upper bound is in
        ScaleWarning(CAFFE_BGR["mean"], CAFFE_BGR["std"])(images_up_to(1.0))
    byte = ScaleWarning(UNIT_IMAGENET["mean"], UNIT_IMAGENET["std"])
    message = (r"largest value of `images` is 255 \(0\.\.255 images\?\), but this model "
               r"normalises values 0\.\.1 \(mean \[0\.485, 0\.456, 0\.406\].*images / 255")
    with pytest.warns(UserWarning, match=message):
        byte(images_up_to(255, "uint8"))
    with pytest.warns(UserWarning, match="is 2.01 "):
        ScaleWarning(UNIT_IMAGENET["mean"], UNIT_IMAGENET["std"])(images_up_to(2.01))


PHOTO = np.random.default_rng(3).uniform(0, 255, (2, 6, 7, 3))


def normalised(images, convention):
    return (images - np.array(convention["mean"])) / np.array(convention["std"])


def warns_once(convention, images, match):
    with pytest.warns(UserWarning, match=match) as said:
        ScaleWarning(convention["mean"], convention["std"])(images)
    assert len(said) == 1


def test_images_already_normalised_or_of_16_bits_are_warned_about():
    twice = r"lie in -2\.\d+\.\.2\.\d+ \(images already normalised, or scaled to -1\.\.1\?\)"
    imagenet_normalised = normalised(PHOTO, IMAGENET_RGB)  # -2.12..2.64: torchvision's output
    for convention in (IMAGENET_RGB, CAFFE_BGR, UNIT_IMAGENET):
        warns_once(convention, imagenet_normalised, twice + ".*mean 0 and std 1")
    # -1..1 images: the normalised kind, not 0..1 (their largest value is 1 too).
    warns_once(IMAGENET_RGB, PHOTO / 127.5 - 1, r"lie in -0\.9\d+\.\.0\.9\d+ \(images already")
    warns_once(IMAGENET_RGB, (PHOTO * 257).astype("uint16"),
               r"is 6\d{4} \(16-bit images, 0\.\.65535\?\).*divided by 257")


def test_the_bounds_of_the_normalised_and_16_bit_kinds():
    def values(smallest, largest):
        return np.array([smallest, largest], "float64").reshape(1, 1, 2, 1).repeat(3, -1)

    with pytest.warns(UserWarning, match="already normalised"):
        ScaleWarning(IMAGENET_RGB["mean"], IMAGENET_RGB["std"])(values(-0.51, 3.0))
    with pytest.warns(UserWarning, match="16-bit"):
        ScaleWarning(IMAGENET_RGB["mean"], IMAGENET_RGB["std"])(values(0, 510.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for convention, smallest, largest in [
            (IMAGENET_RGB, -0.5, 3.0), (IMAGENET_RGB, -0.51, 3.01), (IMAGENET_RGB, 0, 510.0),
            # Resizing's overshoot of 0..255 and of 0..1 images.
            (IMAGENET_RGB, -20.0, 290.0), (UNIT_IMAGENET, -0.05, 1.05),
            (dict(mean=(0.0,) * 3, std=(1.0,) * 3), -2.1, 2.6),  # no normalisation: any
        ]:
            ScaleWarning(convention["mean"], convention["std"])(values(smallest, largest))


@pytest.mark.parametrize("dtype, message", [
    ("bool", r"`images` are of dtype bool: booleans, which become 0 and 1 \(masks given as images\?\)"),
    ("complex64", "dtype complex64: complex numbers"),
    ("int8", r"dtype int8: int8, which holds -128\.\.127"),
    ("<U9", r"dtype str288: no plain numbers \(text\? paths\?"),
    ("object", "dtype object: no plain numbers"),
])
def test_images_of_a_dtype_without_rgb_values_are_refused(dtype, message):
    import tensorflow as tf

    with pytest.raises(ValueError, match=message + r".*AlignSeg takes RGB values 0\.\.255"):
        check_image_dtype(np.dtype(dtype))
    if dtype not in ("<U9", "object"):
        with pytest.raises(ValueError, match=message):
            check_image_dtype(tf.as_dtype(dtype))
    for good in ("uint8", "uint16", "int16", "int32", "float16", "float32", "float64",
                 tf.bfloat16, keras.backend.standardize_dtype("bfloat16")):
        check_image_dtype(good)


def test_non_finite_weights_are_found_in_bfloat16_too():
    # bfloat16 is no NumPy floating type: its NaN weights were skipped.
    import keras

    from alignseg_keras.checks import first_non_finite_weight

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="bfloat16")])
    assert first_non_finite_weight(model) is None
    model.layers[0].bias.assign(np.array([np.nan, 0.0], "float32"))
    assert first_non_finite_weight(model) == model.layers[0].bias.path


def test_eager_calls_are_refused_where_tensorflow_freezes_onednn_kernels():
    name = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
    for value in ("1", "true", " TRUE "):
        assert onednn_weights_frozen("tensorflow", {name: value})
        with pytest.raises(ValueError, match=f"{name} is set: TensorFlow's eager convolutions then "
                                             "reuse the kernels of earlier ones"):
            check_compiled_call("tensorflow", {name: value})
        check_compiled_call("jax", {name: value})
    for environment in ({}, {name: "0"}, {name: "false"}, {name: ""}):
        assert not onednn_weights_frozen("tensorflow", environment)
        check_compiled_call("tensorflow", environment)


def test_sample_weights_that_are_negative_or_not_finite_are_refused():
    # A negative weight gave a loss of about -5e16, then NaN weights after one step.
    for weights in (np.array([1.0, -1.0]), np.array([np.nan, 1.0]), np.full((2, 4, 4), np.inf)):
        with pytest.raises(ValueError, match=r"`sample_weight` holds \d+ value\(s\) that are negative, "
                                             r"NaN or infinite"):
            check_sample_weight(weights)
    with pytest.raises(ValueError, match="must hold numbers"):
        check_sample_weight(np.array(["a", "b"]))
    for weights in (None, np.array([0.0, 2.5]), np.ones((2, 4, 4), "float16"), np.array([1, 0]),
                    np.zeros((0,)), [1.0, -1.0]):  # a list: not checked here (Keras refuses it)
        check_sample_weight(weights)
