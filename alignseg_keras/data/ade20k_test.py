import os

import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras import data

SIZE = (12, 20)


@pytest.fixture
def ade_root(tmp_path, write_image, random_image):
    """A tiny ADEChallengeData2016 tree with JPEG images and PNG annotations."""
    for split, count in (("training", 3), ("validation", 2)):
        for index in range(count):
            stem = f"ADE_{split[:5]}_{index:08d}"
            write_image(tmp_path / "images" / split / f"{stem}.jpg", random_image(*SIZE, seed=index))
            labels = np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) % 151
            write_image(tmp_path / "annotations" / split / f"{stem}.png", labels.astype(np.uint8))
    return tmp_path


def test_labels_shift_by_one_and_zero_is_ignored(ade_root):
    examples = list(data.load_ade20k(str(ade_root), "validation"))
    assert len(examples) == 2
    stored = np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) % 151
    expected = np.where(stored == 0, 255, stored - 1)
    for image, mask in examples:
        assert image.shape == (*SIZE, 3) and image.dtype == tf.uint8
        np.testing.assert_array_equal(mask.numpy(), expected)
    assert data.ADE20K_NUM_CLASSES == 150


def test_label_above_150_names_file_and_value(ade_root, write_image):
    bad = write_image(ade_root / "annotations" / "training" / "ADE_train_00000001.png",
                      np.full(SIZE, 200, np.uint8))
    with pytest.raises(tf.errors.OpError, match=f"{bad}.*200"):
        list(data.load_ade20k(str(ade_root), "training"))


def test_image_without_annotation(ade_root):
    (ade_root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="ADE_train_00000002.png"):
        data.load_ade20k(str(ade_root), "training")


def test_missing_folders_and_bad_split(tmp_path, ade_root):
    with pytest.raises(FileNotFoundError, match="ADE20K root"):
        data.load_ade20k(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="split"):
        data.load_ade20k(str(ade_root), "val")
    (ade_root / "annotations" / "validation").rename(ade_root / "moved")
    with pytest.raises(FileNotFoundError, match="annotation folder of split 'validation'"):
        data.load_ade20k(str(ade_root), "validation")


def test_corrupt_jpeg_names_the_file(ade_root):
    path = ade_root / "images" / "validation" / "ADE_valid_00000001.jpg"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(tf.errors.OpError, match=f"Cannot read image file '{path}'"):
        list(data.load_ade20k(str(ade_root), "validation"))


def test_a_root_named_with_glob_characters(tmp_path, ade_root):
    # glob.glob read "[v2]" as a character class and found no image in the folder.
    moved = tmp_path.parent / f"{tmp_path.name} datasets [v2]*?"
    os.rename(ade_root, moved)
    images, labels = data.ade20k.ade20k_files(str(moved), "validation")
    assert len(images) == len(labels) == 2 and all(path.startswith(str(moved)) for path in images)
