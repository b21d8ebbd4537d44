import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras import visualize
from alignseg_keras.tensorboard_pictures import SegmentationPictures
from alignseg_keras.tensorboard_pictures import confusion_counts
from alignseg_keras.tensorboard_pictures import confusion_layout
from alignseg_keras.tensorboard_pictures import confusion_picture
from alignseg_keras.tensorboard_pictures import example_panel
from alignseg_keras.tensorboard_pictures import heat_colors
from alignseg_keras.tensorboard_pictures import normalized_confusion
from alignseg_keras.tensorboard_pictures import take_examples
from alignseg_keras.testing.models import tiny_alignseg

NAMES = ["road", "car", "sky"]
OFFSET_MODULES = ("align_fa2", "align_fa3", "align_fa4", "align_fa5", "align_cm")


def _data(count=2, size=(32, 48), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *size, 3)).astype("uint8")
    masks = rng.integers(0, 3, (count, *size)).astype("uint8")
    masks[:, 0, :] = 255  # an ignored row
    return images, masks


def _read_images(log_dir):
    """{tag: {step: decoded uint8 picture}} of the image summaries under `log_dir`."""
    found = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                tensor = tf.make_ndarray(value.tensor)  # [width, height, png...]
                assert len(tensor) == 3, "one picture per summary"
                picture = tf.io.decode_png(tensor[2]).numpy()
                assert picture.shape == (int(tensor[1]), int(tensor[0]), 3)
                found.setdefault(value.tag, {})[event.step] = picture
    return found


def _fit(model, callbacks, steps, epochs):
    images, masks = _data(2, seed=1)
    batches = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2).repeat()
    model.compile()
    model.fit(batches, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One fit (3 steps a epoch, 2 epochs) with three callbacks: at each epoch end,
    every 2 steps, and disabled."""
    root = tmp_path_factory.mktemp("pictures")
    images, masks = _data(2)
    model = tiny_alignseg(num_classes=3)
    callbacks = {
        "epoch": SegmentationPictures(str(root / "epoch"), images, masks, NAMES, max_images=2),
        "every_2": SegmentationPictures(str(root / "every_2"), images[:1], masks[:1], NAMES,
                                        every_n_steps=2),
        "disabled": SegmentationPictures(str(root / "disabled"), images, masks, NAMES,
                                         enabled=False),
    }
    _fit(model, list(callbacks.values()), steps=3, epochs=2)  # steps 1..6
    return model, root, images, masks


def test_epoch_end_pictures_have_the_tags_shapes_and_steps(trained):
    model, root, images, masks = trained
    found = _read_images(str(root / "epoch"))
    assert set(found) == {"pictures/example_0", "pictures/example_1", "pictures/confusion",
                          "pictures/legend"}
    for index in range(2):
        assert sorted(found[f"pictures/example_{index}"]) == [3, 6]
    assert sorted(found["pictures/confusion"]) == [3, 6]
    assert sorted(found["pictures/legend"]) == [3]  # the first write only
    panel = found["pictures/example_0"][6]
    assert panel.dtype == np.uint8 and panel.shape[1] == 3 * 48 + 2 * 4
    # Image, truth and prediction, then the offsets of the five modules in rows below.
    assert panel.shape[0] > 4 * 32
    # The panel is what example_panel draws for the final model's prediction and offsets.
    prediction = np.asarray(model.predict_on_batch(images[:1]))[0].argmax(-1)
    offsets = visualize.offset_images(model, images[0])
    assert set(offsets) == set(OFFSET_MODULES)
    expected = example_panel(images[0], masks[0], prediction, visualize.get_palette("auto", 3),
                             offsets)
    np.testing.assert_array_equal(panel, expected)
    # The confusion picture is that of both images' pixels.
    confusion = np.zeros((3, 3), "int64")
    for image, mask in zip(images, masks):
        predicted = np.asarray(model.predict_on_batch(image[None]))[0].argmax(-1)
        confusion += confusion_counts(mask, predicted, 3)
    expected = visualize.titled(confusion_picture(normalized_confusion(confusion), NAMES),
                                "confusion (rows: truth, normalised per row; columns: prediction)")
    np.testing.assert_array_equal(found["pictures/confusion"][6], expected)


def test_every_n_steps_writes_at_multiples_of_n(trained):
    found = _read_images(str(trained[1] / "every_2"))
    assert sorted(found["pictures/example_0"]) == [2, 4, 6]  # 6 once, also an epoch end
    assert sorted(found["pictures/confusion"]) == [2, 4, 6]


def test_disabled_writes_nothing(trained):
    assert not os.path.exists(trained[1] / "disabled")


def test_a_model_without_offsets(tmp_path):
    images, masks = _data(1)
    model = tiny_alignseg(num_classes=3, context=None, fusion="deconv")
    assert not model.offset_outputs
    callback = SegmentationPictures(str(tmp_path), images, masks, NAMES)
    _fit(model, [callback], steps=1, epochs=1)
    panel = _read_images(str(tmp_path))["pictures/example_0"][1]
    one_row = example_panel(images[0], masks[0], np.zeros_like(masks[0]),
                            visualize.get_palette("auto", 3))
    assert panel.shape == one_row.shape  # image, truth and prediction; no offsets


def test_confusion_of_a_hand_made_case():
    labels = np.array([[0, 0, 0, 1], [1, 2, 255, 2]])
    predicted = np.array([[0, 0, 1, 1], [2, 2, 0, 2]])
    counts = confusion_counts(labels, predicted, 4)
    np.testing.assert_array_equal(counts, [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0],
                                           [0, 0, 0, 0]])
    expected = np.array([[2 / 3, 1 / 3, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    matrix = normalized_confusion(counts)
    np.testing.assert_allclose(matrix, expected)
    names = ["road", "car", "sky", "bus"]
    picture = confusion_picture(matrix, names)
    cell, left, top = confusion_layout(4, names)
    for (row, column), value in np.ndenumerate(expected):
        # The cell's top-left corner (away from the percentage written at its bottom).
        color = picture[top + row * cell + 1, left + column * cell + 1]
        if row == 3:
            np.testing.assert_array_equal(color, [224, 224, 224])  # no pixel of class 3
        else:
            np.testing.assert_array_equal(color, heat_colors(value))
    # Decoded back from the colors: the normalised matrix, to the colors' precision.
    red = picture[top + 1 : top + 3 * cell : cell, left + 1 : left + 4 * cell : cell, 0]
    np.testing.assert_allclose((255.0 - red) / (255.0 - 8.0), expected[:3], atol=0.005)


def test_the_confusion_picture_of_many_classes_has_no_names():
    picture = confusion_picture(np.eye(150), [str(k) for k in range(150)])
    cell, left, top = confusion_layout(150, [str(k) for k in range(150)])
    assert cell == 4 and left == top == 4
    assert picture.shape == (top + 600 + 4, left + 600 + 4, 3)


def test_take_examples_and_bad_arguments(tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices(_data(3))
    images, masks = take_examples(dataset, 2)
    assert len(images) == 2 and images[0].shape == (32, 48, 3) and masks[0].shape == (32, 48)
    with pytest.raises(ValueError, match="every_n_steps"):
        SegmentationPictures(str(tmp_path), images, masks, NAMES, every_n_steps=0)
    with pytest.raises(ValueError, match="as many"):
        SegmentationPictures(str(tmp_path), images, masks[:1], NAMES)
    with pytest.raises(ValueError, match="its mask"):
        SegmentationPictures(str(tmp_path), images, [m[:-1] for m in masks], NAMES)
    # A palette of fewer colors than classes failed at the end of the first epoch.
    with pytest.raises(ValueError, match=rf"for each of the {len(NAMES)} classes; received shape \(2, 3\)"):
        SegmentationPictures(str(tmp_path), images, masks, NAMES, palette=[[0, 0, 0], [9, 9, 9]])
    with pytest.raises(ValueError, match="received shape"):
        SegmentationPictures(str(tmp_path), images, masks, NAMES, palette=[0] * len(NAMES))
    # Labels outside the classes failed at the first picture, stopping the fit.
    bad = [m.copy() for m in masks]
    bad[1][5, 5] = 7
    with pytest.raises(ValueError, match=r"mask 1 of the pictures contains value\(s\) \[7\]"):
        SegmentationPictures(str(tmp_path), images, bad, NAMES)
    with pytest.raises(ValueError, match="ignore label 255 is one of the model's 300 classes.*"
                                         r"Give SegmentationPictures .* ignore_index=-1"):
        SegmentationPictures(str(tmp_path), images, masks, [str(i) for i in range(300)])


def test_the_prediction_colors_a_class_that_is_the_ground_truths_ignore_label():
    palette = visualize.get_palette("auto", 3)
    image = np.full((4, 4, 3), 100, "uint8")
    labels = np.zeros((4, 4), "int64")  # class 0 everywhere; the truth ignores 0
    panel = example_panel(image, labels, labels, palette, ignore_index=0)
    reference = example_panel(image, labels, labels, palette, ignore_index=None)
    width = (panel.shape[1] - 2 * 4) // 3  # three pictures with two gaps of 4 (GAP)
    prediction, reference_prediction = panel[:, -width:], reference[:, -width:]
    np.testing.assert_array_equal(prediction, reference_prediction)  # colored, not bare


def test_pictures_of_a_model_of_0_to_1_images_show_them_0_to_255(tmp_path):
    # A model built with mean and std in 0..1 takes 0..1 images: the image column was black.
    images, masks = _data(1)
    unit_images = images.astype("float32") / 255
    model = tiny_alignseg(num_classes=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    callback = SegmentationPictures(str(tmp_path), unit_images, masks, NAMES)
    callback.set_model(model)
    panel = callback.pictures()["pictures/example_0"]
    expected = example_panel(images[0], masks[0], model.predict(unit_images, verbose=0)[0].argmax(-1),
                             callback.palette, visualize.offset_images(model, unit_images[0]))
    np.testing.assert_array_equal(panel, expected)
