"""Reading an image and its label file into validated train ids.

The readers themselves (`read_image`, `read_label_map`, `MAX_PIXELS`) are in
the backend-neutral `alignseg_keras.image_files`; they are re-exported here.
"""

import numpy as np

from alignseg_keras.data.validation import IGNORE_INDEX
from alignseg_keras.data.validation import check_label_values
from alignseg_keras.data.validation import check_same_size
from alignseg_keras.image_files import MAX_PIXELS  # noqa: F401 (re-exported)
from alignseg_keras.image_files import read_image
from alignseg_keras.image_files import read_label_map


def read_example(image_path, mask_path, mapping=None, num_classes=None):
    """Reads an image and its label file and returns validated train ids.

    Args:
        image_path: image file.
        mask_path: label file, or None for an unlabelled image (every pixel 255).
        mapping: a `LabelMapping` from stored values to train ids, or None.
        num_classes: int or None, train ids must be below it (or 255).

    Returns:
        `(image uint8 (H, W, 3), mask uint8 (H, W))`.

    Example:
    ```python
    image, mask = read_example("a.jpg", "a.png", num_classes=150)
    ```
    """
    image = read_image(image_path)
    if mask_path is None:
        return image, np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
    values = read_label_map(mask_path)
    check_same_size(image.shape, values.shape, image_path, mask_path)
    mask = values if mapping is None else mapping(values, mask_path)
    check_label_values(mask, num_classes, f"Label file '{mask_path}'", mapped=mapping is not None)
    return image, mask.astype(np.uint8)
