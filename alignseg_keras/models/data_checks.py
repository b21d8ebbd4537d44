"""Checks on the data given to `AlignSeg.fit`, `evaluate` and `predict`.

Arrays are checked once, up front; `tf.data` pipelines, generators and
`keras.utils.PyDataset`s batch by batch, as they are read, before a batch
reaches the training step. Images must be finite; masks must fit their images
and hold class ids below `num_classes` or the ignore label (see
`alignseg_keras.checks`). Masks `(batch, H, W, 1)` become `(batch, H, W)`, so
that every `fit` call sees one mask layout. Given the model's normalisation,
images in another scale than it normalises (0..1 images for a model of
0..255 values, or the reverse) are warned about (`checks.ScaleWarning`).
"""

import contextlib
import functools
import types

import keras
import numpy as np

from alignseg_keras.checks import check_finite_images
from alignseg_keras.checks import check_image_dtype
from alignseg_keras.checks import check_masks
from alignseg_keras.checks import squeeze_masks


def is_tf_dataset(x):
    """Whether `x` is a `tf.data.Dataset` (without importing TensorFlow)."""
    return hasattr(x, "element_spec") and hasattr(x, "map")


def shuffles_itself(x):
    """Whether Keras leaves the order of `x` alone (a `tf.data.Dataset` or a generator)."""
    return is_tf_dataset(x) or isinstance(x, types.GeneratorType)


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype") and not is_tf_dataset(x)


def check_arrays(images, masks=None, num_classes=None, ignore_index=255, scale_warning=None):
    """Checks an image batch (and its masks when `num_classes` is set); returns the masks squeezed.

    `scale_warning`, a `checks.ScaleWarning` (or None), warns about images in
    another scale than the model normalises.

    Example:
    ```python
    masks = check_arrays(images, masks, num_classes=19)
    ```
    """
    if _is_array(images):
        check_image_dtype(images.dtype)
        check_finite_images(images)
        if scale_warning is not None:
            scale_warning(images)
    if masks is None or num_classes is None or not _is_array(masks) or not _is_array(images):
        return masks
    check_masks(np.shape(images), masks, num_classes, ignore_index)
    return squeeze_masks(masks)


def check_batch(batch, num_classes=None, ignore_index=255, scale_warning=None):
    """Checks one batch, `images` or `(images, masks[, sample_weights])`; returns it with squeezed masks."""
    if not isinstance(batch, (tuple, list)):
        check_arrays(batch, scale_warning=scale_warning)
        return batch
    if len(batch) < 2:
        check_arrays(batch[0], scale_warning=scale_warning)
        return batch
    masks = check_arrays(batch[0], batch[1], num_classes, ignore_index, scale_warning)
    return (batch[0], masks, *batch[2:])


def _checked_generator(batches, check):
    for batch in batches:
        yield check(batch)


class CheckedPyDataset(keras.utils.PyDataset):
    """A `PyDataset` whose batches go through `check` (same length, workers and epochs)."""

    def __init__(self, dataset, check):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset = dataset
        self.check = check

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        return self.check(self.dataset[index])

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def checked_data(x, y=None, num_classes=None, ignore_index=255, scale_warning=None):
    """Returns `(x, y)` for Keras: arrays checked now, batch sources wrapped to check each batch.

    Args:
        x: images (array), a `tf.data.Dataset`, a generator or a `PyDataset`.
        y: masks when `x` is an array, else None.
        num_classes: int, checks masks against it; None checks images only.
        ignore_index: int, the label the loss ignores.
        scale_warning: None, or the `checks.ScaleWarning` of the call (one
            for a `fit` and its validation data), which warns once about
            images in another scale than the model normalises.

    Example:
    ```python
    x, y = checked_data(images, masks, num_classes=19)
    ```
    """
    check = functools.partial(check_batch, num_classes=num_classes, ignore_index=ignore_index,
                              scale_warning=scale_warning)
    if is_tf_dataset(x):
        from alignseg_keras.models.tf_data_checks import checked_dataset

        return checked_dataset(x, num_classes, ignore_index, scale_warning), y
    if isinstance(x, types.GeneratorType):
        return _checked_generator(x, check), y
    if isinstance(x, keras.utils.PyDataset):
        return CheckedPyDataset(x, check), y
    return x, check_arrays(x, y, num_classes, ignore_index, scale_warning)


def data_errors(x):
    """A context in which a failed `tf.data` check of `x` raises its plain `ValueError`."""
    if not is_tf_dataset(x):
        return contextlib.nullcontext()
    from alignseg_keras.models.tf_data_checks import data_errors_as_value_errors

    return data_errors_as_value_errors()


def is_empty_array(x):
    """Whether `x` is an array with no elements (an empty batch or 0-sized images)."""
    return _is_array(x) and 0 in tuple(x.shape)
