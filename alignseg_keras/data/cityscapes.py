"""Cityscapes (fine annotations): the official folder layout and its 19 train ids."""

import glob
import os

import numpy as np
import tensorflow as tf

from alignseg_keras.data.files import paired_dataset
from alignseg_keras.data.labels import LabelMapping
from alignseg_keras.data.validation import IGNORE_INDEX
from alignseg_keras.data.validation import require_choice
from alignseg_keras.data.validation import require_directory
from alignseg_keras.datasets_info import CITYSCAPES_CLASSES  # noqa: F401 (re-exported)
from alignseg_keras.datasets_info import CITYSCAPES_COLORS  # noqa: F401 (re-exported)
from alignseg_keras.datasets_info import LABEL_ID_TO_TRAIN_ID
from alignseg_keras.datasets_info import NUM_LABEL_IDS

_TRAIN_ID_MAPPING = LabelMapping(LABEL_ID_TO_TRAIN_ID, strict=False)
SPLITS = ("train", "val", "test")


def cityscapes_to_train_ids(label_ids):
    """Maps Cityscapes label ids (0..33) to the 19 train ids; anything else is 255.

    Works on NumPy arrays (returns a NumPy array) and on TensorFlow tensors,
    eagerly or inside `tf.data` (returns a tensor); the result is uint8.

    Args:
        label_ids: integer array or tensor of label ids, any shape (e.g. a
            `*_gtFine_labelIds.png` image).

    Example:
    ```python
    cityscapes_to_train_ids(np.array([7, 26, 0, -1]))  # [0, 13, 255, 255]
    ```
    """
    if tf.is_tensor(label_ids):
        table = tf.constant(LABEL_ID_TO_TRAIN_ID)
        ids = tf.cast(label_ids, tf.int32)
        inside = (ids >= 0) & (ids < NUM_LABEL_IDS)
        train_ids = tf.gather(table, tf.clip_by_value(ids, 0, NUM_LABEL_IDS - 1))
        return tf.where(inside, train_ids, tf.constant(IGNORE_INDEX, tf.uint8))
    ids = np.asarray(label_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"Cityscapes label ids must be integers; received dtype {ids.dtype}.")
    return _TRAIN_ID_MAPPING(ids).astype(np.uint8)


def _label_path(image_path, labels_dir, images_dir):
    relative = os.path.relpath(image_path, images_dir)
    name = relative[: -len("_leftImg8bit.png")] + "_gtFine_labelIds.png"
    return os.path.join(labels_dir, name)


def cityscapes_files(root, split):
    """Lists a split's image files and their `*_gtFine_labelIds.png` label files.

    Args:
        root: the Cityscapes folder holding `leftImg8bit/` and `gtFine/`.
        split: `"train"`, `"val"` or `"test"` (test: no label files, None).

    Returns:
        `(image_paths, label_paths)`, sorted; `label_paths` is None for "test".

    Example:
    ```python
    images, labels = cityscapes_files("/data/cityscapes", "val")
    ```
    """
    require_choice("split", split, SPLITS)
    require_directory(root, "Cityscapes root")
    images_dir = os.path.join(root, "leftImg8bit", split)
    require_directory(images_dir, f"Cityscapes image folder of split '{split}'")
    image_paths = sorted(glob.glob(os.path.join(glob.escape(images_dir), "*", "*_leftImg8bit.png")))
    if not image_paths:
        raise FileNotFoundError(
            f"No Cityscapes images found: '{images_dir}' has no "
            "<city>/*_leftImg8bit.png files."
        )
    if split == "test":
        return image_paths, None
    labels_dir = os.path.join(root, "gtFine", split)
    require_directory(labels_dir, f"Cityscapes label folder of split '{split}'")
    label_paths = [_label_path(path, labels_dir, images_dir) for path in image_paths]
    for image_path, label_path in zip(image_paths, label_paths):
        if not os.path.isfile(label_path):
            raise FileNotFoundError(
                f"Label file of Cityscapes image '{image_path}' not found: "
                f"expected '{label_path}'."
            )
    return image_paths, label_paths


def load_cityscapes(root, split="train", shuffle_files=False, seed=None, repeat=False):
    """Cityscapes fine annotations as `(image, mask)` pairs of 19 train ids.

    Reads the official layout `root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`
    and `root/gtFine/<split>/<city>/*_gtFine_labelIds.png`, mapping the label
    ids to train ids with `cityscapes_to_train_ids` (255 = ignore).

    The test split's labels are withheld by the benchmark (its
    `gtFine/test` files are placeholders), so `split="test"` reads the images
    only and gives masks that are all 255: use it for prediction and
    submission, not for evaluation.

    Args:
        root: the Cityscapes folder holding `leftImg8bit/` and `gtFine/`.
        split: `"train"` (2975 images), `"val"` (500) or `"test"` (1525).
        shuffle_files: bool, shuffle the file order on every iteration.
        seed: int or None, seed of the file shuffle.
        repeat: bool, an endless stream of passes over the files; with
            `shuffle_files` each pass in its own permutation drawn statelessly
            from `seed` and the pass number, the same in every iterator and
            every process of a job (training; `alignseg train` uses it).

    Returns:
        A `tf.data.Dataset` of `(image uint8 (1024, 2048, 3), mask uint8 (1024, 2048))`.

    Raises:
        ValueError: an unknown split.
        FileNotFoundError: the root, the split's image or label folder, any
            image's label file, or all images are missing. Unreadable files and
            size mismatches raise, while iterating, a `tf.errors.OpError`
            naming the file.

    Example:
    ```python
    train = load_cityscapes("/data/cityscapes", "train", shuffle_files=True, seed=0, repeat=True)
    ```
    """
    image_paths, label_paths = cityscapes_files(root, split)
    return paired_dataset(
        image_paths, label_paths, _TRAIN_ID_MAPPING, len(CITYSCAPES_CLASSES), shuffle_files, seed, repeat
    )
