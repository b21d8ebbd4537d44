"""Checks on what enters the model, with errors that name the culprit and the fix.

NumPy and `keras.backend`, so they run on every Keras backend (and without
TensorFlow): class counts, image pixels and label maps.
`alignseg_keras.data.validation` uses the label check for files, `AlignSeg.fit`/`evaluate`/`predict` and the inference
functions use the others for arrays, generators and (through
`alignseg_keras.models.tf_data_checks`) `tf.data` pipelines.
"""

import functools
import numbers
import operator
import os

import numpy as np

IGNORE_INDEX = 255

# The largest class count AlignSeg accepts. The biggest public segmentation
# label sets have a few thousand classes (ADE20K-full: 3688). At 4096 classes
# the logits of one 512x512 image already take 4 GiB (float32), and MeanIoU's
# confusion matrix 8 * 4096**2 bytes = 128 MiB; a count far beyond this is
# almost always raw ids used as a class count, and would only fail later as an
# out-of-memory error (100000 classes: an 80 GB confusion matrix).
MAX_CLASSES = 4096

# TensorFlow's switch that makes oneDNN treat every convolution's kernel as a constant:
# each convolution reorders its kernel at its first call and reuses it ever after.
ONEDNN_FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"

# Images checked at once, so that a check never allocates more than a few
# images' worth of temporary memory.
_CHUNK = 8


def check_class_count(num_classes, minimum=2):
    """Returns `num_classes` as an int in [minimum, MAX_CLASSES], or raises `ValueError`.

    Args:
        num_classes: the number of classes asked for.
        minimum: 2 for a softmax head (one class makes every loss 0 and every
            mIoU 1), 1 for a metric.

    Example:
    ```python
    check_class_count(19)  # 19
    ```
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"`num_classes` must be an int; received {num_classes!r}.")
    num_classes = int(num_classes)
    if num_classes == 1 and minimum > 1:
        raise ValueError(
            "`num_classes=1`: a softmax over one class is always 1, so the loss is 0 and "
            "the mIoU 1.0 whatever the model learns. A binary task (object vs background) "
            "needs num_classes=2, with masks of 0 (background) and 1 (object)."
        )
    if num_classes < minimum:
        raise ValueError(f"`num_classes` must be at least {minimum}; received {num_classes}.")
    if num_classes > MAX_CLASSES:
        logits_gib = 512 * 512 * 4 * num_classes / 2**30
        confusion_gib = 8 * num_classes**2 / 2**30
        raise ValueError(
            f"`num_classes={num_classes}` is more than {MAX_CLASSES}: the logits of one "
            f"512x512 image would take {logits_gib:.0f} GiB and the mIoU confusion matrix "
            f"{confusion_gib:.0f} GiB. The largest segmentation label sets have a few "
            "thousand classes (ADE20K-full: 3688); map raw label ids to consecutive "
            "train ids 0..C-1 and pass that C."
        )
    return num_classes


def check_positive_int(value, what):
    """Returns `value` as an int of at least 1, or raises a `ValueError` naming `what`
    (a bool, a fraction such as 2.9, text, 0 or a negative number).

    Example:
    ```python
    check_positive_int(3, "`bins`")  # 3
    ```
    """
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        raise ValueError(f"{what} must be a positive int; received {value!r}.")
    return int(value)


def _dtype_kind(array):
    """The NumPy kind ("f", "i", "u", "b", ...) of a NumPy, TensorFlow, JAX or torch array's
    dtype; "f" for bfloat16 too (NumPy's kind of ml_dtypes' bfloat16 is "V")."""
    return _kind_of_dtype(getattr(array, "dtype", None))


def _numpy_name(dtype):
    """A dtype as NumPy reads it: Keras' name where Keras knows the dtype (torch.float32 ->
    "float32"), else what NumPy makes of it."""
    import keras

    try:
        return keras.backend.standardize_dtype(dtype)
    except ValueError:
        return getattr(dtype, "as_numpy_dtype", dtype)


def _kind_of_dtype(dtype):
    """The NumPy kind of a NumPy, TensorFlow, JAX or torch dtype (see `_dtype_kind`)."""
    name = _numpy_name(dtype)
    if "float" in str(name):
        return "f"
    try:
        return np.dtype(name).kind
    except TypeError:  # TensorFlow's "string", torch's quantized types
        return "O"


def _host_array(block):
    """`block` as a NumPy array: also a torch tensor in bfloat16 or on a GPU, which
    `np.asarray` refuses, through the backend's own conversion."""
    try:
        return np.asarray(block)
    except (TypeError, RuntimeError):
        import keras

        return keras.ops.convert_to_numpy(block)


def _chunks(array):
    """`(start, block)` pairs over the first axis, `_CHUNK` items at a time."""
    for start in range(0, len(array), _CHUNK):
        yield start, _host_array(array[start : start + _CHUNK])


def check_image_batch_shape(shape, image_size=None):
    """Raises `ValueError` unless `shape` is that of an image batch `(batch, H, W, 3)`
    (dimensions that are None pass; so does a shape of unknown rank), of the size
    `image_size` `(H, W)` where a model fixes it (None in it: any).

    Example:
    ```python
    check_image_batch_shape((2, 64, 64, 3))
    ```
    """
    if shape is not None and getattr(shape, "rank", 0) is None:
        return  # unknown rank (a symbolic tensor): checked where the values are known
    if shape is None or len(shape) != 4:
        raise ValueError(
            "AlignSeg expects a batch of images (batch, height, width, 3 channels); "
            f"received an input of shape {shape}."
        )
    if shape[-1] is not None and shape[-1] != 3:
        raise ValueError(
            "AlignSeg expects RGB images with 3 channels; received an input "
            f"of shape {tuple(shape)} with {shape[-1]} channels."
        )
    for size, fixed in zip(shape[1:3], image_size or (None, None)):
        if size is not None and fixed is not None and size != fixed:
            raise ValueError(
                f"This AlignSeg takes images of {image_size[0]}x{image_size[1]} (its "
                "`image_shape`, fixed by its encoder, such as keras-hub's MiTBackbone); "
                f"received an input of shape {tuple(shape)}. Resize or crop the images, or "
                "predict larger ones in tiles of that size "
                "(`alignseg_keras.inference.predict_sliding`)."
            )


def check_image_dtype(dtype, source="`images`"):
    """Raises `ValueError` for images of a dtype that holds no RGB values 0..255.

    Booleans (masks given as images?) and complex numbers would be cast to
    0/1 or their real part, and int8 wraps values above 127 to negative ones,
    all without an error; text is no pixel values at all. Floats (bfloat16
    too), unsigned and wider signed integers pass.

    Args:
        dtype: the images' dtype (NumPy, TensorFlow, JAX or torch, or its name).
        source: what holds the images, for the message.

    Example:
    ```python
    check_image_dtype("uint8")
    ```
    """
    kind = _kind_of_dtype(dtype)
    name = _dtype_name(dtype)
    if kind == "b":
        cause = ("booleans, which become 0 and 1 (masks given as images?); pass the RGB "
                 "images, values 0..255")
    elif kind == "c":
        cause = "complex numbers, of which the model would take the real part"
    elif kind == "i" and str(_numpy_name(dtype)) == "int8":
        cause = ("int8, which holds -128..127: RGB values above 127 wrap around to "
                 "negative ones; pass uint8 or float images")
    elif kind not in "fiu":
        cause = ("no plain numbers (text? paths? quantized values?); decode image files "
                 "first, e.g. with "
                 "`keras.utils.load_img` or `alignseg_keras.data`")
    else:
        return
    raise ValueError(f"{source} are of dtype {name}: {cause}. AlignSeg takes RGB values "
                     "0..255 (uint8 or float).")


def _dtype_name(dtype):
    """A dtype's short name: "bool" for NumPy's, TensorFlow's and torch's alike."""
    name = getattr(dtype, "name", None)  # NumPy's and TensorFlow's dtypes
    if isinstance(name, str):
        return name
    try:
        return np.dtype(_numpy_name(dtype)).name  # NumPy's scalar types, torch's dtypes
    except TypeError:
        return str(dtype)


def first_non_finite_weight(model):
    """The path of the first weight of `model` holding NaN or infinity, or None.

    Example:
    ```python
    first_non_finite_weight(model)  # "alignseg/head/classifier/bias", or None
    ```
    """
    return first_non_finite_variable(getattr(model, "weights", ()))


def first_non_finite_variable(variables):
    """The path of the first of the Keras `variables` holding NaN or infinity, or None
    (float variables of every width, bfloat16 among them; others are skipped)."""
    import keras

    for variable in variables:
        if not keras.backend.is_float_dtype(variable.dtype):
            continue
        value = np.asarray(keras.ops.convert_to_numpy(variable)).astype("float32")
        if not np.isfinite(value).all():
            return variable.path
    return None


def check_finite_weights(model, source):
    """Raises a `ValueError` naming `source` and the first weight of `model` that holds
    NaN or infinity: such a model predicts class 0 everywhere (NaN logits), or NaN.

    Example:
    ```python
    check_finite_weights(keras.saving.load_model("m.keras"), "m.keras")
    ```
    """
    weight = first_non_finite_weight(model)
    if weight:
        raise ValueError(f"{source}: its weight {weight} holds NaN or infinity (a diverged "
                         "training saved as it was, or a damaged conversion); its predictions "
                         "would be NaN. Use an earlier checkpoint.")


def check_finite_images(images, source="`images`"):
    """Raises `ValueError` if a float image batch holds a NaN or infinite value.

    One such pixel makes every logit NaN (and every label 0), or every weight
    NaN after a training step. Integer images are always finite.

    Args:
        images: array `(batch, height, width, 3)`.
        source: what holds the images, for the message.

    Example:
    ```python
    check_finite_images(np.zeros((2, 8, 8, 3), "float32"))
    ```
    """
    if _dtype_kind(images) not in "fc" or len(np.shape(images)) == 0:
        return
    for start, block in _chunks(images):
        finite = np.isfinite(block)
        if not finite.all():
            index = start + int(np.argmin(finite.reshape(len(block), -1).all(axis=1)))
            raise ValueError(
                f"{source} contains {int(finite.size - finite.sum())} NaN or infinite "
                f"value(s), the first in image {index}; AlignSeg takes finite RGB values 0..255. "
                "Check how the images were loaded or normalised (a division by zero?)."
            )


# Where images in the wrong scale are told apart from dark or bright ones: a batch of
# 0..255 images whose largest value is at most 1 is black to the eye, and 0..1 images
# reach 2 only through gross overshoot (bicubic resizing overshoots by a few percent).
_UNIT_RANGE_LIMIT = 1.0
_BYTE_RANGE_FLOOR = 2.0
# Images already normalised (ImageNet's mean and std: -2.12..2.64; -1..1 images) go
# below -0.5, which resizing's overshoot of 0..1 images does not reach, and stay
# below 3, which 0..255 images exceed unless black.
_NORMALISED_FLOOR = -0.5
_NORMALISED_LIMIT = 3.0
# 16-bit images (0..65535) and 10- or 12-bit ones exceed twice 255, which resizing's
# overshoot of 0..255 images does not reach.
_WIDE_RANGE_FLOOR = 510.0


def expected_image_range(mean, std):
    """The largest RGB value of the images that `mean` and `std` normalise: 255.0
    where a mean or std exceeds 1 (AlignSeg's and keras-hub's 0..255 convention),
    1.0 where all lie in 0..1 (torchvision's values), None where they do not tell
    (mean 0 and std 1: no normalisation).

    Example:
    ```python
    expected_image_range((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # 255.0
    ```
    """
    mean = [float(v) for v in mean]
    std = [float(v) for v in std]
    if max(mean) > 1.0 or max(std) > 1.0:
        return 255.0
    if min(mean) >= 0.0 and (any(mean) or any(s != 1.0 for s in std)):
        return 1.0
    return None


def _scale_tests(largest, smallest, expected_range):
    """The kinds of misscaling, each with its test of images whose values lie in
    `smallest..largest` (numbers, or NumPy or TensorFlow scalars: the tests are of
    their kind) for a model taking values 0..`expected_range` (`expected_image_range`):
    "normalised" (already normalised images, below -0.5 and none above 3) for any
    range; "unit" (0..1 images: at most 1, but not all 0) and "wide" (above 510:
    16-bit images) where it is 255; "byte" (0..255 images: above 2) where it is 1."""
    if expected_range is None:
        return {}
    tests = {"normalised": (smallest < _NORMALISED_FLOOR) & (largest <= _NORMALISED_LIMIT)}
    if expected_range == 255.0:
        tests["unit"] = (largest > 0.0) & (largest <= _UNIT_RANGE_LIMIT)
        tests["wide"] = largest > _WIDE_RANGE_FLOOR
    else:
        tests["byte"] = largest > _BYTE_RANGE_FLOOR
    return tests


def is_misscaled(largest, smallest, expected_range):
    """Whether images whose values lie in `smallest..largest` are in another scale than
    `expected_range` (`expected_image_range`; the tests of `_scale_tests`). Numbers, or
    NumPy or TensorFlow scalars: the result is of their kind."""
    tests = list(_scale_tests(largest, smallest, expected_range).values())
    return functools.reduce(operator.or_, tests) if tests else False


def image_scale_message(largest, smallest, expected_range, mean, std, source="`images`"):
    """The warning for images whose values lie in `smallest..largest` but do not fit
    the normaliser's scale `expected_range` (`expected_image_range`), or None."""
    tests = _scale_tests(largest, smallest, expected_range)
    kind = next((kind for kind, test in tests.items() if test), None)
    if kind is None:
        return None
    normaliser = f"(mean {_rounded(mean)}, std {_rounded(std)})"
    scale = "RGB values 0..255" if expected_range == 255.0 else "values 0..1"
    if kind == "normalised":
        return (
            f"The values of {source} lie in {smallest:.6g}..{largest:.6g} (images already "
            f"normalised, or scaled to -1..1?), but this model normalises {scale} itself "
            f"{normaliser}: normalised twice, they are nearly constant. Feed the images "
            "before normalisation, or build the model with mean 0 and std 1 "
            "(`mean=(0, 0, 0), std=(1, 1, 1)`) to take them as they are."
        )
    if kind == "unit":
        return (
            f"The largest value of {source} is {largest:.6g} (0..1 images?), but this "
            f"model normalises {scale} {normaliser}: normalised so, 0..1 images are nearly "
            "constant and the network sees almost nothing of them. Feed 0..255 values "
            "(e.g. images * 255), or build the model with mean and std in your images' "
            "scale (divided by 255)."
        )
    if kind == "wide":
        return (
            f"The largest value of {source} is {largest:.6g} (16-bit images, 0..65535?), but "
            f"this model normalises {scale} {normaliser}: normalised so, they reach "
            "hundreds, far beyond what its weights expect. Feed 0..255 values (16-bit "
            "images divided by 257)."
        )
    return (
        f"The largest value of {source} is {largest:.6g} (0..255 images?), but this model "
        f"normalises {scale} {normaliser}: normalised so, 0..255 images reach hundreds, "
        "far beyond what its weights expect. Feed 0..1 values (images / 255), or build the "
        "model with mean and std in 0..255 (multiplied by 255), AlignSeg's convention."
    )


def _rounded(values):
    return [round(float(v), 4) for v in values]


class ScaleWarning:
    """Warns once (a `UserWarning`) about image batches in another scale than
    `mean` and `std` normalise (`expected_image_range`): 0..1 images for a model
    normalising 0..255 values, or the reverse; 16-bit images; images already
    normalised (`is_misscaled`). Such images train and predict without an error,
    and badly.

    Args:
        mean: the three means the model subtracts.
        std: the three standard deviations it divides by.

    Example:
    ```python
    warn = ScaleWarning((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    warn(np.full((1, 8, 8, 3), 0.5, "float32"))  # warns: 0..1 images?
    ```
    """

    def __init__(self, mean, std):
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.expected_range = expected_image_range(self.mean, self.std)
        self.warned = False
        from alignseg_keras.config_utils import user_location

        # The user's line that started the call, named where the batch is checked in a
        # pipeline's thread, with no user's line on the stack.
        self.origin = user_location()

    def __call__(self, images, source="`images`"):
        """Checks an image batch (an array) and warns if this is its first misscaled one."""
        if (self.warned or self.expected_range is None or len(np.shape(images)) == 0
                or np.size(images) == 0 or _dtype_kind(images) not in "fcui"):
            return
        largest, smallest = -np.inf, np.inf
        for _, block in _chunks(images):
            largest = max(largest, float(np.max(block)))
            smallest = min(smallest, float(np.min(block)))
        self.warn_for_range(largest, smallest, source)

    def warn_for_range(self, largest, smallest, source="a batch of images"):
        """Warns, once, if images whose values lie in `smallest..largest` are misscaled."""
        message = image_scale_message(largest, smallest, self.expected_range, self.mean,
                                      self.std, source)
        if message is not None and not self.warned:
            from alignseg_keras.config_utils import warn_at_user_line

            self.warned = True
            warn_at_user_line(message, self.origin)


def scale_warning_of(normalization):
    """A `ScaleWarning` for a model's `normalization` (a dict with `mean` and
    `std`, as `AlignSeg.normalization`), or None for a model without one."""
    if normalization is None:
        return None
    return ScaleWarning(normalization["mean"], normalization["std"])


def label_value_error(mask, limit, source, ignore_index=IGNORE_INDEX, hint=""):
    """A `ValueError` naming the labels outside [0, limit) other than `ignore_index`, or None.

    `ignore_index=None`: no label is ignored (a loss that ignores none).
    """
    bad = (mask < 0) | (mask >= limit)
    if ignore_index is not None:
        bad &= mask != ignore_index
    if not bad.any():
        return None
    values = np.unique(mask[bad])[:10].tolist()
    allowed = f" or {ignore_index} (ignore)" if ignore_index is not None else ""
    return ValueError(
        f"{source} contains value(s) {values} outside [0, {limit}) in {int(bad.sum())} "
        f"pixel(s); labels must be class ids below {limit}{allowed}.{hint}"
    )


def _mask_shape_error(image_shape, mask_shape):
    """A `ValueError` when masks are not `(batch, H, W)` or `(batch, H, W, 1)` for images `(batch, H, W, 3)`."""
    rank_ok = len(mask_shape) == 3 or (len(mask_shape) == 4 and mask_shape[-1] == 1)
    if rank_ok and tuple(mask_shape[1:3]) == tuple(image_shape[1:3]):
        return None
    cause = ""
    if len(mask_shape) == 4 and tuple(mask_shape[1:3]) == tuple(image_shape[1:3]):
        cause = " (one-hot masks? give class ids: np.argmax(masks, axis=-1))"
    elif tuple(mask_shape[1:3]) == tuple(image_shape[2:0:-1]):
        cause = " (height and width swapped?)"
    return ValueError(
        f"Masks of shape {tuple(mask_shape)} do not fit images of shape {tuple(image_shape)}"
        f"{cause}: each mask must be (batch, height, width) or (batch, height, width, 1) "
        f"with its image's height and width, {image_shape[1]}x{image_shape[2]}."
    )


def fraction_error(block, num_classes, ignore_index):
    """A `ValueError` when float masks hold non-integer values (masks divided by 255?)."""
    fractional = block != np.floor(block)
    if not fractional.any():
        return None
    examples = np.unique(block[fractional])[:5].tolist()
    return ValueError(
        f"Masks hold fractional values {examples} in {int(fractional.sum())} pixel(s); "
        f"masks are integer class ids 0..{num_classes - 1}"
        f"{f' ({ignore_index} = ignore)' if ignore_index is not None else ''}. "
        "Were they divided by 255? Pass the integer ids, e.g. "
        "`np.rint(masks * 255).astype('uint8')`."
    )


def check_ignore_label(ignore_index, num_classes, remedy=None):
    """Raises `ValueError` when the ignore label of the library's convention, 255, is one
    of the model's classes.

    With more than 255 classes the default ignore label is a class: its pixels
    would count for nothing in the loss and the mean IoU, without an error. Another
    label inside the classes is taken as chosen (a class left out on purpose).

    Args:
        ignore_index: the label ignored, or None (none is).
        num_classes: the model's number of classes.
        remedy: the sentence saying what to give instead, or None for `compile`'s.

    Example:
    ```python
    check_ignore_label(255, 19)
    ```
    """
    if ignore_index == IGNORE_INDEX < num_classes:
        raise ValueError(
            f"The ignore label {ignore_index} is one of the model's {num_classes} classes "
            f"(0..{num_classes - 1}): pixels of class {ignore_index} would count for nothing "
            "in the loss and the mean IoU. " + (remedy or (
                "Give compile(ignore_index=-1) and mark unlabelled pixels -1, or a loss whose "
                f"ignore label lies outside 0..{num_classes - 1}."))
        )


def check_masks(images_shape, masks, num_classes, ignore_index=IGNORE_INDEX):
    """Checks training masks against their images and the class count.

    Raises `ValueError` for masks whose height and width differ from the
    images', fractional float values (masks divided by 255), or labels outside
    [0, num_classes) that are not `ignore_index` (raw Cityscapes label ids,
    -1 for "unlabelled"), naming the values, the class count and the fix.

    Args:
        images_shape: shape of the image batch, `(batch, H, W, 3)`.
        masks: array `(batch, H, W)` or `(batch, H, W, 1)`.
        num_classes: int, the model's number of classes.
        ignore_index: int, the label the loss ignores (255), or None when it
            ignores none.

    Example:
    ```python
    check_masks((2, 8, 8, 3), np.zeros((2, 8, 8), "uint8"), num_classes=19)
    ```
    """
    error = _mask_shape_error(tuple(images_shape), tuple(np.shape(masks)))
    if error:
        raise error
    if _dtype_kind(masks) not in "biuf":  # text (labels read from a CSV?), complex numbers
        raise ValueError(f"The masks are of dtype {_dtype_name(masks.dtype)}: expected class ids "
                         f"as integers (0..{num_classes - 1}, {ignore_index} ignored).")
    for _, block in _chunks(masks):
        error = _mask_value_error(block, num_classes, ignore_index)
        if error:
            raise error


def _mask_value_error(block, num_classes, ignore_index):
    """A `ValueError` for fractional labels or labels outside the classes, or None."""
    if _dtype_kind(block) in "fc":
        error = fraction_error(block, num_classes, ignore_index)
        if error:
            return error
    unlabelled = (
        f"mark unlabelled pixels {ignore_index}" if ignore_index is not None
        else "give the loss an ignore label for unlabelled pixels (the compiled loss ignores "
        "none; e.g. keras.losses.SparseCategoricalCrossentropy(ignore_class=255))"
    )
    hint = (
        f" The model has num_classes={num_classes}: map raw label ids to train ids "
        f"(Cityscapes: alignseg_keras.data.cityscapes_to_train_ids), {unlabelled}, or build "
        "the model with more classes."
    )
    return label_value_error(block, num_classes, "A mask", ignore_index, hint)


def squeeze_masks(masks):
    """`(batch, H, W, 1)` masks as `(batch, H, W)`; others unchanged.

    One mask layout for every `fit` call, so that a second `fit` with the
    other layout does not retrace the training step with an unknown rank.
    """
    if len(np.shape(masks)) == 4 and np.shape(masks)[-1] == 1:
        return masks[..., 0]
    return masks


def check_sample_weight(sample_weight):
    """Raises `ValueError` for NumPy sample weights with a negative, NaN or infinite value.

    The losses take `sum(s w l) / sum(s w)`: a negative weight gave a loss of about
    -5e16 and NaN weights after one step of `fit`, a NaN weight a NaN loss, with no
    word on the cause. Other types pass unchecked (tensors; Keras refuses lists).
    """
    if not isinstance(sample_weight, np.ndarray) or sample_weight.size == 0:
        return
    if sample_weight.dtype.kind not in "biuf":
        raise ValueError(f"`sample_weight` must hold numbers; received dtype {sample_weight.dtype}.")
    bad = ~np.isfinite(sample_weight) | (sample_weight < 0)
    if bad.any():
        values = np.unique(sample_weight[bad])[:5].tolist()
        raise ValueError(
            f"`sample_weight` holds {int(bad.sum())} value(s) that are negative, NaN or "
            f"infinite ({values}); weights are finite numbers >= 0 (0 leaves a pixel or an "
            "image out)."
        )


def onednn_weights_frozen(backend, environment=None):
    """Whether TensorFlow's oneDNN convolutions treat their kernels as constants here
    (`TF_ONEDNN_ASSUME_FROZEN_WEIGHTS` true, which TensorFlow reads as a bool: "1" or
    "true" in any case); never on other backends.

    Args:
        backend: the Keras backend's name.
        environment: the environment variables (`os.environ` when None).
    """
    if backend != "tensorflow":  # every call of a model asks: JAX and torch need no lookup
        return False
    environment = os.environ if environment is None else environment
    return environment.get(ONEDNN_FROZEN_WEIGHTS_VARIABLE, "").strip().lower() in ("1", "true")


def check_compiled_call(backend, environment=None):
    """Raises `ValueError` for an eager call of a model where TensorFlow freezes oneDNN kernels.

    Under `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS` eager convolutions reuse the kernel
    of an earlier convolution of the same shape: `model(images)` gave logits off
    by 44% of their largest value (offset fields by 18-84%), without an error,
    where `predict` and `predict_on_batch` (compiled functions) give the model's
    own. A call being traced (`tf.function`) passes. Arguments as
    `onednn_weights_frozen`.
    """
    if not onednn_weights_frozen(backend, environment):
        return
    import tensorflow as tf  # the variable is TensorFlow's: only its backend gets here

    if tf.executing_eagerly():
        raise ValueError(
            f"{ONEDNN_FROZEN_WEIGHTS_VARIABLE} is set: TensorFlow's eager convolutions then "
            "reuse the kernels of earlier ones, and `model(images)` gives wrong logits. Use "
            "`model.predict(images)` or `model.predict_on_batch(images)`, or unset the "
            "variable (docs/inference.md)."
        )


def check_weights_may_change(backend, environment=None):
    """Raises `ValueError` where TensorFlow would keep using a convolution's first kernel.

    With `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS` true, TensorFlow's oneDNN convolutions
    cache the kernel they were first called with and ignore later changes of the
    weights, so training would run every step with the initial weights, and report
    losses that do not move, without an error. It is meant for processes that only
    infer (docs/inference.md); `fit` and `train_on_batch` refuse to start under it.

    Args:
        backend: the Keras backend's name; only "tensorflow" reads the variable.
        environment: the environment variables (`os.environ` when None).
    """
    environment = os.environ if environment is None else environment
    if onednn_weights_frozen(backend, environment):
        value = environment[ONEDNN_FROZEN_WEIGHTS_VARIABLE]
        raise ValueError(
            f"{ONEDNN_FROZEN_WEIGHTS_VARIABLE}={value} is set: TensorFlow's oneDNN convolutions "
            "then keep the kernel of their first call, and training would compute every step "
            "with the initial weights. Unset it to train; it is for processes that only infer "
            "(see docs/inference.md)."
        )
