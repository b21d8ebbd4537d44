"""The checks of `alignseg_keras.models.data_checks` on `tf.data` pipelines (TensorFlow only).

Every batch is tested in the pipeline with a few TensorFlow reductions (finite
images, masks of the images' size, integer labels in range); only a batch that
fails goes to the NumPy check of `alignseg_keras.checks`, which raises the
`ValueError` that names the values. The check runs in `tf.data`, outside the
training step, so it also holds under XLA and on the JAX backend. Given the
model's normalisation, a batch in another scale than it normalises (its largest
and smallest values, two more reductions) goes to Python's `warnings` too
(`checks.is_misscaled`).
"""

import contextlib
import functools
import re

import tensorflow as tf

from alignseg_keras.checks import check_finite_images
from alignseg_keras.checks import check_image_batch_shape
from alignseg_keras.checks import check_image_dtype
from alignseg_keras.checks import check_masks
from alignseg_keras.checks import is_misscaled
from alignseg_keras.data.files import READER_NAME

def _masks_rank_ok(masks):
    rank = masks.shape.rank
    return rank == 3 or (rank == 4 and masks.shape[-1] in (1, None))


def _mask_problem(images, masks, num_classes, ignore_index):
    """A boolean tensor: masks of another size, fractional, or with labels out of range."""
    if not _masks_rank_ok(masks):
        return tf.constant(True)
    size_differs = tf.reduce_any(tf.shape(images)[1:3] != tf.shape(masks)[1:3])
    if masks.dtype.is_floating:
        labels = masks
        fractional = tf.reduce_any(masks != tf.floor(masks))
    else:
        labels = masks if masks.dtype == tf.int64 else tf.cast(masks, tf.int32)
        fractional = tf.constant(False)
    outside = (labels < 0) | (labels >= tf.cast(num_classes, labels.dtype))
    if ignore_index is not None:  # None: the loss ignores no label
        outside &= labels != tf.cast(ignore_index, labels.dtype)
    out_of_range = tf.reduce_any(outside)
    return size_differs | fractional | out_of_range


def _raise_batch_error(images, masks=None, num_classes=None, ignore_index=255):
    """The NumPy check of a batch the fast check flagged; raises its `ValueError`."""
    check_image_batch_shape(images.shape)
    check_finite_images(images, "A batch of images")
    if masks is not None:
        check_masks(images.shape, masks, num_classes, ignore_index)
    return True


# The Python functions whose `ValueError` a pipeline raises as an `OpError` (its
# message holds their traceback): the batch check above and the files' reader.
_CHECKING_FUNCTIONS = (_raise_batch_error.__name__, READER_NAME)


def _scale_checked(images, scale_warning):
    """`images`, after `scale_warning` (a `checks.ScaleWarning`, or None) has seen
    the batch's largest and smallest values; Python runs only for a misscaled batch."""
    if scale_warning is None or scale_warning.expected_range is None:
        return images
    # Reduced in the images' own dtype (no float32 copy of the batch); an empty batch gives
    # the dtype's extremes the wrong way round (-inf and inf for floats): never misscaled.
    largest = tf.cast(tf.reduce_max(images), tf.float32)
    smallest = tf.cast(tf.reduce_min(images), tf.float32)

    def warn(largest, smallest):
        scale_warning.warn_for_range(float(largest), float(smallest))
        return True

    warned = tf.cond(is_misscaled(largest, smallest, scale_warning.expected_range),
                     lambda: tf.numpy_function(warn, [largest, smallest], tf.bool),
                     lambda: tf.constant(True))
    with tf.control_dependencies([warned]):
        return tf.identity(images)


def _check_element(*element, num_classes, ignore_index, scale_warning=None):
    images, rest = element[0], list(element[1:])
    check_image_dtype(images.dtype, "The images of the dataset")
    masks = rest[0] if rest and num_classes is not None else None
    problem = tf.constant(False)
    if images.shape.rank != 4 or images.shape[-1] != 3:  # decoded files: known at run time
        shape = tf.shape(images)
        problem = (tf.size(shape) != 4) | (shape[-1] != 3)
    if images.dtype.is_floating:
        problem = problem | ~tf.reduce_all(tf.math.is_finite(images))
    if masks is not None:
        problem = problem | _mask_problem(images, masks, num_classes, ignore_index)
    report = functools.partial(_raise_batch_error, num_classes=num_classes, ignore_index=ignore_index)
    inputs = [images] if masks is None else [images, masks]
    checked = tf.cond(
        problem,
        lambda: tf.numpy_function(report, inputs, tf.bool),
        lambda: tf.constant(True),
    )
    with tf.control_dependencies([checked]):
        images = tf.ensure_shape(tf.identity(images), (None, None, None, 3))
    images = _scale_checked(images, scale_warning)
    if masks is not None and masks.shape.rank == 4:
        rest[0] = masks[..., 0]
    return (images, *rest) if rest else images


def checked_dataset(dataset, num_classes=None, ignore_index=255, scale_warning=None):
    """`dataset` with every batch checked (images, and masks when `num_classes` is set).

    Elements are `images` or `(images, masks[, sample_weights])` tensors;
    other structures (dicts) pass unchecked. `scale_warning`, a
    `checks.ScaleWarning` (or None), warns about batches in another scale.

    Example:
    ```python
    train = checked_dataset(train, num_classes=19)
    ```
    """
    spec = dataset.element_spec
    first = spec[0] if isinstance(spec, tuple) else spec
    if not isinstance(first, tf.TensorSpec) or (isinstance(spec, tuple) and not all(
        isinstance(item, tf.TensorSpec) for item in spec
    )):
        return dataset
    check = functools.partial(_check_element, num_classes=num_classes, ignore_index=ignore_index,
                              scale_warning=scale_warning)
    return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@contextlib.contextmanager
def data_errors_as_value_errors():
    """Re-raises a failed pipeline check, or a file that `alignseg_keras.data` could not
    read or refused, as the plain `ValueError` it raised inside `tf.data`."""
    try:
        yield
    except tf.errors.OpError as error:
        message = error.message or ""
        found = re.search(r"ValueError: (.*)", message)
        if found is None or not any(name in message for name in _CHECKING_FUNCTIONS):
            raise
        raise ValueError(found.group(1)) from None
