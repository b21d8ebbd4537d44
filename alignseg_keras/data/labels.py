"""Mapping the values stored in label files to train ids (255 = ignore)."""

import numpy as np

from alignseg_keras.data.validation import IGNORE_INDEX
from alignseg_keras.data.validation import check_label_values
from alignseg_keras.data.validation import check_num_classes


class LabelMapping:
    """Turns stored label values into train ids through a lookup table.

    Args:
        table: 1-D integer array, `train_id = table[stored value]`.
        strict: bool; True makes stored values beyond the table an error
            (a lookup array), False maps them to 255 (a dict).

    Example:
    ```python
    mapping = LabelMapping(np.array([255, 0, 1]), strict=True)
    train_ids = mapping(np.array([[0, 1, 2]]), "a.png")  # [[255, 0, 1]]
    ```
    """

    def __init__(self, table, strict):
        self.table = np.asarray(table, np.int64)
        self.strict = bool(strict)

    def __call__(self, values, path=None):
        """Maps the integer array `values` (read from the label file `path`,
        which errors name)."""
        inside = (values >= 0) & (values < self.table.size)
        if self.strict and not inside.all():
            raise ValueError(
                f"Label file '{path}' contains value(s) "
                f"{np.unique(values[~inside])[:10].tolist()} that the label map does not "
                f"cover (it maps stored values 0..{self.table.size - 1})."
            )
        mapped = self.table[np.clip(values, 0, self.table.size - 1)]
        return np.where(inside, mapped, IGNORE_INDEX)


def _table_from_dict(label_map):
    try:
        pairs = {int(key): int(value) for key, value in label_map.items()}
    except (TypeError, ValueError):
        raise ValueError(
            f"`label_map` keys and values must be ints; received {label_map!r}."
        ) from None
    if not pairs or min(pairs) < 0:
        raise ValueError(
            f"`label_map` needs at least one non-negative key; received {label_map!r}."
        )
    table = np.full(max(pairs) + 1, IGNORE_INDEX, np.int64)
    for key, value in pairs.items():
        table[key] = value
    return table


def _table_from_array(label_map):
    table = np.asarray(label_map)
    if table.ndim != 1 or table.size == 0 or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(
            "`label_map` must be a dict or a non-empty 1-D integer lookup array; "
            f"received an array of shape {table.shape} and dtype {table.dtype}."
        )
    return table


def label_mapping(label_map, num_classes=None):
    """Builds the `LabelMapping` of a `label_map` argument and checks it.

    Args:
        label_map: None (stored values are train ids already), a dict
            `{stored value: train id}` (values not listed become 255, ignore),
            or a 1-D integer array with `train_id = label_map[stored value]`
            (stored values beyond its end are an error).
        num_classes: int or None; every train id of `label_map` must be below
            it (or below 255 when None) or be 255.

    Returns:
        `(mapping, num_classes)`: a `LabelMapping` or None, and the checked
        `num_classes`.

    Example:
    ```python
    mapping, num_classes = label_mapping({0: 255, 1: 0, 2: 1}, num_classes=2)
    ```
    """
    num_classes = check_num_classes(num_classes)
    if label_map is None:
        return None, num_classes
    if isinstance(label_map, dict):
        mapping = LabelMapping(_table_from_dict(label_map), strict=False)
    else:
        mapping = LabelMapping(_table_from_array(label_map), strict=True)
    check_label_values(mapping.table, num_classes, "`label_map`")
    return mapping, num_classes
