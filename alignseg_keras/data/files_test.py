import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alignseg_keras import data

SIZE = (10, 14)


@pytest.fixture
def pair(tmp_path, write_image, random_image):
    """Writes an image and a label file with `values`; returns their paths."""

    def make(values, name="a", image_suffix=".png", mode=None):
        image = write_image(tmp_path / f"{name}{image_suffix}", random_image(*SIZE))
        label = write_image(tmp_path / f"{name}_label.png", np.asarray(values), mode)
        return image, label

    return make


def stored_values():
    return (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) % 4).astype(np.uint8)


def only(dataset):
    (image, mask), = list(dataset)
    return image.numpy(), mask.numpy()


def test_reads_png_and_jpeg_images(pair):
    for suffix in (".png", ".jpg"):
        image_path, label_path = pair(stored_values(), name=suffix[1:], image_suffix=suffix)
        image, mask = only(data.from_files([image_path], [label_path], num_classes=4))
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(mask, stored_values())
        if suffix == ".png":
            np.testing.assert_array_equal(image, np.asarray(Image.open(image_path)))


def test_dict_label_map_and_unlisted_values_ignored(pair):
    paths = pair(stored_values())
    _, mask = only(data.from_files(*[[p] for p in paths], label_map={1: 0, 2: 1}))
    np.testing.assert_array_equal(mask, np.array([255, 0, 1, 255], np.uint8)[stored_values()])


def test_array_label_map(pair):
    paths = pair(stored_values())
    _, mask = only(data.from_files(*[[p] for p in paths], label_map=np.array([255, 2, 1, 0])))
    np.testing.assert_array_equal(mask, np.array([255, 2, 1, 0])[stored_values()])


def test_palette_png_gives_indices(tmp_path, pair):
    palette_image = Image.fromarray(stored_values(), "P")
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    image_path, label_path = pair(stored_values())
    palette_image.save(label_path)
    _, mask = only(data.from_files([image_path], [label_path], num_classes=4))
    np.testing.assert_array_equal(mask, stored_values())


def test_sixteen_bit_labels_through_a_map(pair):
    stored = stored_values().astype(np.uint16) * 1000
    image_path, label_path = pair(stored)
    assert Image.open(label_path).mode.startswith("I")
    _, mask = only(data.from_files([image_path], [label_path], label_map={0: 255, 1000: 0, 2000: 1, 3000: 2}))
    np.testing.assert_array_equal(mask, np.array([255, 0, 1, 2])[stored_values()])


def test_unlabelled_images(pair):
    image_path, _ = pair(stored_values())
    _, mask = only(data.from_files([image_path], None))
    assert (mask == 255).all()


def test_out_of_range_label_names_file_and_value(pair):
    image_path, label_path = pair(stored_values())
    with pytest.raises(tf.errors.OpError, match=rf"{label_path}.*\[3\] outside \[0, 3\)"):
        list(data.from_files([image_path], [label_path], num_classes=3))


def test_value_beyond_lookup_array(pair):
    image_path, label_path = pair(stored_values())
    with pytest.raises(tf.errors.OpError, match=rf"{label_path}.*\[3\].*0\.\.2"):
        list(data.from_files([image_path], [label_path], label_map=np.array([255, 0, 1])))


def test_size_mismatch_names_both_files(pair, write_image):
    image_path, label_path = pair(stored_values())
    write_image(label_path, np.zeros((SIZE[0], SIZE[1] + 1), np.uint8))
    with pytest.raises(tf.errors.OpError, match=f"{label_path}.*10x15.*{image_path}.*10x14"):
        list(data.from_files([image_path], [label_path]))


def test_color_label_file_is_rejected(pair, random_image, write_image):
    image_path, label_path = pair(stored_values())
    write_image(label_path, random_image(*SIZE))
    with pytest.raises(tf.errors.OpError, match=f"{label_path}.*'RGB'"):
        list(data.from_files([image_path], [label_path]))


def test_corrupt_image_names_the_file(pair):
    image_path, label_path = pair(stored_values())
    with open(image_path, "r+b") as file:
        file.truncate(60)
    with pytest.raises(tf.errors.OpError, match=f"Cannot read image file '{image_path}'"):
        list(data.from_files([image_path], [label_path]))


def test_listing_errors_are_eager(tmp_path, pair):
    image_path, label_path = pair(stored_values())
    with pytest.raises(FileNotFoundError, match="missing.png"):
        data.from_files([image_path], [str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        data.from_files([str(tmp_path / "nothing.jpg")], [label_path])
    with pytest.raises(ValueError, match="1 files but `mask_paths` has 2"):
        data.from_files([image_path], [label_path, label_path])
    with pytest.raises(ValueError, match="empty"):
        data.from_files([], [])
    with pytest.raises(ValueError, match=r"`image_paths` must be a list of files; received the single path"):
        data.from_files(image_path, [label_path])
    with pytest.raises(ValueError, match=r"`mask_paths` must be a list of files; .* Pass \["):
        data.from_files([image_path], tmp_path / "a_label.png")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=2.5), r"`num_classes` must be an int between 1 and 255 .* received 2.5"),
        (dict(num_classes=True), "num_classes"),
        (dict(num_classes="3"), "num_classes"),
        (dict(num_classes=256), "num_classes"),
        (dict(label_map={1: 7}, num_classes=3), r"label_map.*\[7\]"),
        (dict(label_map={"a": 1}), "ints"),
        (dict(label_map={}), "at least one"),
        (dict(label_map=np.zeros((2, 2), int)), "1-D integer"),
        (dict(label_map=[0.5, 1.5]), "1-D integer"),
    ],
)
def test_bad_label_arguments(pair, kwargs, message):
    image_path, label_path = pair(stored_values())
    with pytest.raises(ValueError, match=message):
        data.from_files([image_path], [label_path], **kwargs)


def test_file_names_that_are_not_utf8_are_read(tmp_path, write_image, random_image):
    # b"caf\xe9" is Latin-1: Python names such files with surrogate escapes.
    folder = os.fsencode(tmp_path)
    image_path = os.fsdecode(os.path.join(folder, b"caf\xe9.png"))
    label_path = os.fsdecode(os.path.join(folder, b"caf\xe9_label.png"))
    picture = random_image(*SIZE)
    write_image(image_path, picture)
    write_image(label_path, stored_values())
    image, mask = only(data.from_files([image_path], [label_path], num_classes=4))
    np.testing.assert_array_equal(image, picture)
    np.testing.assert_array_equal(mask, stored_values())
    image, mask = only(data.from_files([image_path], None))
    assert (mask == 255).all()
    # A bad file of such a name is named too (TensorFlow carried an empty message).
    from alignseg_keras.models.tf_data_checks import data_errors_as_value_errors

    write_image(label_path, np.full(SIZE, 7, np.uint8))
    with pytest.raises(ValueError, match=r"caf\\xe9_label.png' contains value\(s\) \[7\]"):
        with data_errors_as_value_errors():
            list(data.from_files([image_path], [label_path], num_classes=4))


def test_label_files_pair_with_images_by_name():
    images = [f"/d/img/frame_{n}.png" for n in (1, 10, 2)]  # as sorted()
    masks = [f"/d/ann/frame_{n}_mask.png" for n in (10, 1, 2)]  # as sorted(): "1_" > "10"
    assert data.pair_by_name(images, masks) == [f"/d/ann/frame_{n}_mask.png" for n in (1, 10, 2)]
    cityscapes = ["/c/leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png",
                  "/c/leftImg8bit/val/munster/munster_000000_000019_leftImg8bit.png"]
    labels = [path.replace("leftImg8bit", "gtFine").replace("_gtFine.png", "_gtFine_labelIds.png")
              for path in cityscapes]
    assert data.pair_by_name(cityscapes, labels[::-1]) == labels
    # The shared prefix and suffix never overlap: "ab" and "abb" stay apart.
    assert data.pair_by_name(["ab.jpg", "abb.jpg"], ["abb.png", "ab.png"]) == ["ab.png", "abb.png"]
    assert data.pair_by_name(["one.jpg"], ["other.png"]) == ["other.png"]
    # One name the start of another: the longest shared prefix takes part of a key.
    assert data.pair_by_name(["d/photo.jpg", "d/photo_2.jpg"], ["m/photo_2_mask.png", "m/photo_mask.png"]) \
        == ["m/photo_mask.png", "m/photo_2_mask.png"]
    assert data.pair_by_name(["f_1.png", "f_1_2.png", "f_1_3.png"],
                             ["f_1_3_mask.png", "f_1_mask.png", "f_1_2_mask.png"]) \
        == ["f_1_mask.png", "f_1_2_mask.png", "f_1_3_mask.png"]
    assert data.pair_by_name(["a/x_mask.png", "a/x_2_mask.png"], ["b/x.png", "b/x_2.png"]) \
        == ["b/x.png", "b/x_2.png"]


def test_numbers_pair_by_value():
    images = [f"img/s_{i:02d}.png" for i in range(1, 12)]  # zero-padded; the labels are not
    masks = [f"ann/s_{i}_mask.png" for i in range(1, 12)]
    assert data.pair_by_name(images, masks[::-1]) == masks


def test_pairing_by_name_on_random_names():
    # Labels named prefix + the image's distinct part + suffix, in any order. The suffix
    # starts with a letter or sign: one starting with a digit would continue the number the
    # part may end with ('s111' + '1a_m'), which cannot be told from the number 1111.
    rng = np.random.default_rng(0)
    alphabet = list("ab_1-")
    for _ in range(300):
        count = int(rng.integers(1, 6))
        parts = set()
        while len(parts) < count:
            parts.add("".join(rng.choice(alphabet, int(rng.integers(0, 4)))))
        parts = sorted(parts)
        stem, suffix = ("".join(rng.choice(alphabet, int(rng.integers(0, 4)))) for _ in range(2))
        suffix = str(rng.choice(list("ab_-"))) + suffix
        images = [f"img/s{stem}{part}.jpg" for part in parts]
        masks = [f"ann/s{stem}{part}{suffix}_m.png" for part in parts]
        assert data.pair_by_name(images, masks[::-1]) == masks, (images, masks)


@pytest.mark.parametrize(
    "images, masks, message",
    [(["a/x1.png", "a/x2.png"], ["b/x1_m.png", "b/x3_m.png"],
      "no label file for 'a/x2.png'; no image for 'b/x3_m.png'"),
     # The files that do not pair, not the first of each list (f0.png and f0_mask.png before).
     ([f"img/f{i}.png" for i in range(4)], ["lbl/f0_mask.png", "lbl/f1_mask.png",
                                           "lbl/g2_mask.png", "lbl/f3_mask.png"],
      "no label file for 'img/f2.png'; no image for 'lbl/g2_mask.png'"),
     # Frames 10-17 against labels of frames 0-7 or 120-127 paired through the fallback
     # search, which also cut numbers.
     ([f"img/frame_{i}.png" for i in range(10, 18)], [f"lbl/frame_{i}_m.png" for i in range(8)],
      "no label file for 'img/frame_10.png'"),
     ([f"img/frame_{i}.png" for i in range(20, 28)], [f"lbl/frame_{i}_m.png" for i in range(120, 128)],
      "no label file for 'img/frame_20.png'"),
     (["a/x1.png", "a/x01.png"], ["b/x1_m.png", "b/x2_m.png"],
      "Two images differ only in their extension or in the leading zeros of a number"),
     # Another decade of frames: they paired by their last digit before, without a word.
     ([f"img/frame_{i}.png" for i in range(10, 18)], [f"lbl/frame_{i}_m.png" for i in range(20, 28)],
      "no label file for 'img/frame_10.png', 'img/frame_11.png', 'img/frame_12.png', "
      "'img/frame_13.png', 'img/frame_14.png' and 3 more; no image for 'lbl/frame_20_m.png'"),
     # A label file missing, a stray file among the labels: those files, not every one.
     (["a/x1.png", "a/x2.png"], ["b/x1_m.png"],
      "2 images and 1 label files do not pair up by name (the part of the names that differs "
      "between files): no label file for 'a/x2.png'. Give one label file per image"),
     ([f"imgs/f_{i}.jpg" for i in range(1, 5)], [f"masks/f_{i}_m.png" for i in (1, 2, 4)],
      "no label file for 'imgs/f_3.jpg'. Give"),
     ([f"imgs/f_{i}.jpg" for i in range(1, 5)],
      [f"masks/f_{i}_m.png" for i in (1, 2, 4)] + ["masks/legend.png"],
      "no label file for 'imgs/f_3.jpg'; no image for 'masks/legend.png'. Give"),
     ([f"imgs/f_{i}.jpg" for i in range(1, 5)] + ["imgs/notes.jpg"],
      [f"masks/f_{i}_m.png" for i in range(1, 5)],
      "no label file for 'imgs/notes.jpg'. Give"),
     # The image glob matched the label files too (one folder for both).
     ([f"d/f_{i}.png" for i in range(1, 4)] + [f"d/f_{i}_mask.png" for i in range(1, 4)],
      [f"d/f_{i}_mask.png" for i in range(1, 4)],
      "no label file for 'd/f_1_mask.png', 'd/f_2_mask.png', 'd/f_3_mask.png'. Give"),
     (["a/x1.png"], [], "1 images and 0 label files: give one label file per image"),
     (["a/x1.png", "a/x1.jpg"], ["b/x1_m.png", "b/x2_m.png"], "Two images differ only in their extension")],
)
def test_files_that_do_not_pair_by_name_are_refused(images, masks, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.pair_by_name(images, masks)


# A bad file first, then reads that are still running (sleeping) when the error
# arrives; the failed iterator is left in a reference cycle, as Keras' `fit` leaves it.
FAILED_PIPELINE_EXIT = """
import sys, time
import alignseg_keras.data.files as files
from alignseg_keras import data

original = files.read_example

def slow_read(image_path, mask_path, *args):
    if "good" in image_path:
        time.sleep(1.0)
    return original(image_path, mask_path, *args)

files.read_example = slow_read
folder = sys.argv[1]
images = [f"{folder}/bad.png"] + [f"{folder}/good{i}.png" for i in range(6)]
masks = [f"{folder}/bad_label.png"] + [f"{folder}/good{i}_label.png" for i in range(6)]

def fail():
    iterator = iter(data.from_files(images, masks, num_classes=4))
    try:
        next(iterator)
    except Exception as error:
        cycle = [error]
        cycle.append(cycle)
        print("raised", type(error).__name__, flush=True)

fail()
"""


def test_a_process_exits_after_a_pipeline_failed_on_a_file(tmp_path, write_image, random_image):
    import subprocess
    import sys

    write_image(tmp_path / "bad.png", random_image(*SIZE))
    write_image(tmp_path / "bad_label.png", np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8))
    for i in range(6):
        write_image(tmp_path / f"good{i}.png", random_image(*SIZE))
        write_image(tmp_path / f"good{i}_label.png", stored_values())
    # Before the garbage was collected at exit, the interpreter's shutdown freed the
    # pipeline while reads were running, and they could never finish: a hang.
    process = subprocess.run([sys.executable, "-c", FAILED_PIPELINE_EXIT, str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "raised InvalidArgumentError" in process.stdout


def test_the_endless_file_order_is_the_same_in_every_iterator():
    from alignseg_keras.data.files import endless_file_order

    assert list(endless_file_order(3, shuffle_files=False).take(7).as_numpy_iterator()) == [0, 1, 2, 0, 1, 2, 0]
    for seed in (0, None):
        order = endless_file_order(5, shuffle_files=True, seed=seed)
        first = order.as_numpy_iterator()
        head = next(first)  # a first iterator that has read ahead
        stream = list(order.take(15).as_numpy_iterator())
        assert [head] + [next(first) for _ in range(14)] == stream
        passes = [stream[:5], stream[5:10], stream[10:]]
        assert all(sorted(one) == [0, 1, 2, 3, 4] for one in passes) and len({tuple(p) for p in passes}) > 1
    rebuilt = [list(endless_file_order(5, shuffle_files=True, seed=0).take(15).as_numpy_iterator()) for _ in range(2)]
    assert rebuilt[0] == rebuilt[1]


def test_unreadable_files_and_sizes_that_differ_are_named_from_the_headers(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "a_m.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "b_m.png")
    (tmp_path / "c.png").write_text("not an image")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "c_m.png")
    turned = Image.fromarray(np.zeros((6, 4, 3), np.uint8))  # displayed 4x6: EXIF turns it
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "d.jpg", exif=exif)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "d_m.png")
    data.check_file_headers([str(tmp_path / "a.png"), str(tmp_path / "d.jpg")],
                            [str(tmp_path / "a_m.png"), str(tmp_path / "d_m.png")])
    images = [str(tmp_path / f"{name}.png") for name in "abc"]
    masks = [str(tmp_path / f"{name}_m.png") for name in "abc"]
    with pytest.raises(ValueError, match=(
            rf"2 of 3 image and label pairs cannot be used: Label file '{re.escape(masks[1])}' is "
            rf"4x6 \(HxW\) but its image '{re.escape(images[1])}' is 5x6; Cannot read image file "
            rf"'{re.escape(images[2])}'")):
        data.check_file_headers(images, masks)
    with pytest.raises(ValueError, match=r"cannot be used \(and 1 more\)"):
        data.check_file_headers(images, masks, shown=1)


def test_binary_masks_of_0_and_255_are_warned_about(pair):
    # Every object pixel (255) is ignored: the model learnt the background alone, silently.
    binary = np.where(stored_values() > 1, 255, 0).astype(np.uint8)
    paths = [pair(binary, name=f"b{n}") for n in range(2)]
    images, masks = [image for image, _ in paths], [mask for _, mask in paths]
    with pytest.warns(UserWarning, match=r"The first 2 label files hold only 0 and 255 \(after any "
                      r"label_map\), none of classes 1..1.*label_map=\{0: 0, 255: 1\}") as caught:
        data.from_files(images, masks, num_classes=2)
    assert caught[0].filename == __file__  # the user's line
    image, mask = next(iter(data.from_files(images, masks, num_classes=2,
                                            label_map={0: 0, 255: 1})))
    np.testing.assert_array_equal(mask.numpy(), binary // 255)


@pytest.mark.parametrize("values, num_classes", [
    (lambda v: np.where(v > 2, 255, v), 3),  # classes 1 and 2 occur: a real ignore region
    (lambda v: np.zeros_like(v), 2),  # background only, nothing ignored
    (lambda v: np.where(v > 1, 255, 0), None),  # no classes given: nothing to compare with
])
def test_labels_of_other_classes_are_not_warned_about(pair, values, num_classes):
    image, mask = pair(values(stored_values()).astype(np.uint8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.from_files([image], [mask], num_classes=num_classes)


def test_sizes_that_differ_by_an_exif_turn_say_so(tmp_path):
    photo = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # turned by 90 degrees: displayed 6x4
    photo.save(tmp_path / "a.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "a_mask.png")
    message = (r"Label file '.*a_mask.png' is 4x6 \(HxW\) but its image '.*a.jpg' is 6x4. The "
               r"EXIF orientation of the image '.*a.jpg' turns it by 90 degrees \(stored 4x6")
    with pytest.raises(ValueError, match=message):
        data.check_file_headers([str(tmp_path / "a.jpg")], [str(tmp_path / "a_mask.png")])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        list(data.from_files([str(tmp_path / "a.jpg")], [str(tmp_path / "a_mask.png")]))
