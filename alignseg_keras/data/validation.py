"""Checks on dataset folders, file pairs and label values, with clear errors.

Every error names what was wrong: the folder, the file, the argument or the
value, so that a bad dataset fails when it is listed or read rather than as a
crash deep inside TensorFlow or a silent NaN in the loss.
"""

import numbers
import os

from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import label_value_error


def require_directory(path, description):
    """Raises `FileNotFoundError` unless `path` is an existing folder.

    Args:
        path: folder that must exist.
        description: what the folder is, for the message (e.g. "Cityscapes root").

    Example:
    ```python
    require_directory("/data/cityscapes/leftImg8bit/train", "Cityscapes image folder")
    ```
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{description} not found: '{path}' is not a folder.")


def require_choice(name, value, choices):
    """Raises `ValueError` unless `value` is one of `choices`.

    Example:
    ```python
    require_choice("split", "train", ("train", "val", "test"))
    ```
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}; received {value!r}.")


def require_files(paths, description):
    """Raises `FileNotFoundError` naming the first of `paths` that is not a file.

    Example:
    ```python
    require_files(["a.png", "b.png"], "image")
    ```
    """
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{description} file not found: '{path}'.")


def check_num_classes(num_classes):
    """Returns `num_classes` as an int in [1, 255] (255 is the ignore value), or None."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(
            f"`num_classes` must be an int between 1 and {IGNORE_INDEX} (label {IGNORE_INDEX} "
            f"means ignore); received {num_classes!r}."
        )
    return int(num_classes)


def check_same_size(image_shape, mask_shape, image_path, mask_path):
    """Raises `ValueError` when a label map's height and width differ from its image's.

    Example:
    ```python
    check_same_size((64, 128, 3), (64, 128), "a.png", "a_label.png")
    ```
    """
    if tuple(image_shape[:2]) != tuple(mask_shape[:2]):
        from alignseg_keras.image_files import turning_note

        raise ValueError(
            f"Label file '{mask_path}' is {mask_shape[0]}x{mask_shape[1]} (HxW) but its "
            f"image '{image_path}' is {image_shape[0]}x{image_shape[1]}."
            + turning_note(image_path, "the image") + turning_note(mask_path, "the label file")
        )


def check_label_values(mask, num_classes, source, mapped=False):
    """Raises `ValueError` if `mask` holds a value outside [0, num_classes) other
    than the ignore value 255 (an out-of-range label makes sparse cross-entropy
    return NaN on GPUs).

    Args:
        mask: integer array of train ids.
        num_classes: int, or None to check only the range 0..255.
        source: what holds the labels, for the message (e.g. "Label file 'a.png'").
        mapped: bool, whether `mask` went through a `label_map` (for the message).

    Example:
    ```python
    check_label_values(np.array([[0, 1, 255]]), 19, "Label file 'a_label.png'")
    ```
    """
    limit = IGNORE_INDEX if num_classes is None else num_classes
    after = " after `label_map`" if mapped else ""
    error = label_value_error(mask, limit, f"{source}{after}")
    if error:
        raise error
