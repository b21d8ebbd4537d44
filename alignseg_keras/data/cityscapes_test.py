import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alignseg_keras import data
from alignseg_keras.data import cityscapes

SIZE = (16, 32)
CITIES = {"aachen": 2, "bremen": 1}


@pytest.fixture
def cityscapes_root(tmp_path, write_image, random_image):
    """A tiny Cityscapes tree: train and val with labels, test with placeholders."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for city, count in CITIES.items():
            for index in range(count):
                stem = f"{city}_{index:06d}_000019"
                image_path = tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                write_image(image_path, random_image(*SIZE, seed=index))
                label_ids = rng.integers(0, 34, SIZE).astype(np.uint8)
                if split == "test":
                    label_ids[:] = 0
                write_image(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
    return tmp_path


def label_path(root, split, image_path):
    city = os.path.basename(os.path.dirname(image_path))
    name = os.path.basename(image_path).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
    return os.path.join(root, "gtFine", split, city, name)


def test_mapping_table_matches_the_official_one():
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    label_ids = np.arange(-1, 40)
    train_ids = data.cityscapes_to_train_ids(label_ids)
    for label_id, train_id in zip(label_ids, train_ids):
        assert train_id == expected.get(int(label_id), 255)
    assert train_ids.dtype == np.uint8
    assert len(data.CITYSCAPES_CLASSES) == 19 and data.CITYSCAPES_CLASSES[13] == "car"


def test_mapping_on_tensors_matches_numpy():
    label_ids = np.random.default_rng(0).integers(-3, 300, (5, 7))
    expected = data.cityscapes_to_train_ids(label_ids)
    eager = data.cityscapes_to_train_ids(tf.constant(label_ids))
    assert eager.dtype == tf.uint8
    np.testing.assert_array_equal(eager.numpy(), expected)
    stored = label_ids.astype(np.uint8)
    mapped = tf.data.Dataset.from_tensors(stored).map(data.cityscapes_to_train_ids)
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), data.cityscapes_to_train_ids(stored))


def test_mapping_rejects_float_arrays():
    with pytest.raises(ValueError, match="integers"):
        data.cityscapes_to_train_ids(np.array([7.0]))


def test_load_reads_images_and_maps_labels(cityscapes_root):
    image_paths, label_paths = cityscapes.cityscapes_files(str(cityscapes_root), "val")
    assert len(image_paths) == sum(CITIES.values())
    examples = list(data.load_cityscapes(str(cityscapes_root), "val"))
    assert len(examples) == len(image_paths)
    for (image, mask), image_path, label in zip(examples, image_paths, label_paths):
        assert image.dtype == tf.uint8 and image.shape == (*SIZE, 3)
        assert mask.dtype == tf.uint8 and mask.shape == SIZE
        np.testing.assert_array_equal(image.numpy(), np.asarray(Image.open(image_path)))
        stored = np.asarray(Image.open(label))
        np.testing.assert_array_equal(mask.numpy(), data.cityscapes_to_train_ids(stored))


def test_test_split_gives_all_ignore_masks_without_labels(cityscapes_root):
    for path in (cityscapes_root / "gtFine" / "test").rglob("*.png"):
        path.unlink()
    examples = list(data.load_cityscapes(str(cityscapes_root), "test"))
    assert len(examples) == sum(CITIES.values())
    assert all((mask.numpy() == 255).all() for _, mask in examples)


def test_shuffle_files_changes_order_only(cityscapes_root):
    plain = [image.numpy().tobytes() for image, _ in data.load_cityscapes(str(cityscapes_root), "train")]
    shuffled = [
        image.numpy().tobytes()
        for image, _ in data.load_cityscapes(str(cityscapes_root), "train", shuffle_files=True, seed=1)
    ]
    assert sorted(plain) == sorted(shuffled)


def test_missing_root_and_split(tmp_path, cityscapes_root):
    with pytest.raises(FileNotFoundError, match="Cityscapes root.*nowhere"):
        data.load_cityscapes(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="split"):
        data.load_cityscapes(str(cityscapes_root), "training")
    (cityscapes_root / "leftImg8bit" / "train").rename(cityscapes_root / "moved")
    with pytest.raises(FileNotFoundError, match="image folder of split 'train'"):
        data.load_cityscapes(str(cityscapes_root), "train")


def test_missing_label_folder(cityscapes_root):
    (cityscapes_root / "gtFine" / "val").rename(cityscapes_root / "moved")
    with pytest.raises(FileNotFoundError, match="label folder of split 'val'"):
        data.load_cityscapes(str(cityscapes_root), "val")


def test_image_without_label_file(cityscapes_root):
    image_paths, _ = cityscapes.cityscapes_files(str(cityscapes_root), "train")
    missing = label_path(cityscapes_root, "train", image_paths[1])
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=f"'{missing}'"):
        data.load_cityscapes(str(cityscapes_root), "train")


def test_empty_split(cityscapes_root):
    for path in (cityscapes_root / "leftImg8bit" / "val").rglob("*.png"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="No Cityscapes images"):
        data.load_cityscapes(str(cityscapes_root), "val")


def test_label_of_another_size_names_the_file(cityscapes_root, write_image):
    image_paths, _ = cityscapes.cityscapes_files(str(cityscapes_root), "val")
    wrong = label_path(cityscapes_root, "val", image_paths[0])
    write_image(wrong, np.zeros((8, 32), np.uint8))
    with pytest.raises(tf.errors.OpError, match=f"{wrong}.*8x32"):
        list(data.load_cityscapes(str(cityscapes_root), "val"))


def test_a_root_named_with_glob_characters(tmp_path, cityscapes_root):
    moved = tmp_path.parent / f"{tmp_path.name} cityscapes [v2]*?"
    os.rename(cityscapes_root, moved)
    images, labels = cityscapes.cityscapes_files(str(moved), "val")
    assert len(images) == len(labels) == sum(CITIES.values())
