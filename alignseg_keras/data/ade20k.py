"""ADE20K (SceneParsing ADEChallengeData2016): the official folder layout, 150 classes."""

import glob
import os

import numpy as np

from alignseg_keras.data.files import paired_dataset
from alignseg_keras.data.labels import LabelMapping
from alignseg_keras.data.validation import IGNORE_INDEX
from alignseg_keras.data.validation import require_choice
from alignseg_keras.data.validation import require_directory
from alignseg_keras.datasets_info import ADE20K_CLASSES  # noqa: F401 (re-exported)
from alignseg_keras.datasets_info import ADE20K_COLORS  # noqa: F401 (re-exported)
from alignseg_keras.datasets_info import ADE20K_NUM_CLASSES

SPLITS = ("training", "validation")
# Stored value 0 ("other") is ignored; class k (1..150) becomes train id k - 1.
_TRAIN_ID_MAPPING = LabelMapping(
    np.concatenate([[IGNORE_INDEX], np.arange(ADE20K_NUM_CLASSES)]), strict=True
)


def ade20k_files(root, split):
    """Lists a split's `images/<split>/*.jpg` and `annotations/<split>/*.png` files.

    Args:
        root: the `ADEChallengeData2016` folder.
        split: `"training"` (20210 images) or `"validation"` (2000).

    Returns:
        `(image_paths, label_paths)`, sorted by name.

    Example:
    ```python
    images, labels = ade20k_files("/data/ADEChallengeData2016", "validation")
    ```
    """
    require_choice("split", split, SPLITS)
    require_directory(root, "ADE20K root")
    images_dir = os.path.join(root, "images", split)
    labels_dir = os.path.join(root, "annotations", split)
    require_directory(images_dir, f"ADE20K image folder of split '{split}'")
    require_directory(labels_dir, f"ADE20K annotation folder of split '{split}'")
    image_paths = sorted(glob.glob(os.path.join(glob.escape(images_dir), "*.jpg")))
    if not image_paths:
        raise FileNotFoundError(f"No ADE20K images found: '{images_dir}' has no *.jpg files.")
    label_paths = []
    for image_path in image_paths:
        name = os.path.splitext(os.path.basename(image_path))[0] + ".png"
        label_path = os.path.join(labels_dir, name)
        if not os.path.isfile(label_path):
            raise FileNotFoundError(
                f"Annotation of ADE20K image '{image_path}' not found: expected '{label_path}'."
            )
        label_paths.append(label_path)
    return image_paths, label_paths


def load_ade20k(root, split="training", shuffle_files=False, seed=None, repeat=False):
    """ADE20K scene parsing as `(image, mask)` pairs of 150 train ids.

    Reads `root/images/<split>/*.jpg` and `root/annotations/<split>/*.png`;
    stored label 0 ("other") becomes 255 (ignore) and label k (1..150) becomes
    train id k - 1. Images differ in size.

    Args:
        root: the `ADEChallengeData2016` folder.
        split: `"training"` or `"validation"`.
        shuffle_files: bool, shuffle the file order on every iteration.
        seed: int or None, seed of the file shuffle.
        repeat: bool, an endless stream of passes over the files; with
            `shuffle_files` each pass in its own permutation drawn statelessly
            from `seed` and the pass number, the same in every iterator and
            every process of a job (training; `alignseg train` uses it).

    Returns:
        A `tf.data.Dataset` of `(image uint8 (H, W, 3), mask uint8 (H, W))`.

    Raises:
        ValueError: an unknown split.
        FileNotFoundError: the root, a split folder, an image's annotation, or
            all images are missing. Unreadable files, size mismatches and
            labels above 150 raise, while iterating, a `tf.errors.OpError`
            naming the file and the value.

    Example:
    ```python
    val = load_ade20k("/data/ADEChallengeData2016", "validation")
    ```
    """
    image_paths, label_paths = ade20k_files(root, split)
    return paired_dataset(
        image_paths, label_paths, _TRAIN_ID_MAPPING, ADE20K_NUM_CLASSES, shuffle_files, seed, repeat
    )
