"""The in-graph `tf.data` augmentation pipeline for training and evaluation.

Training follows the paper and the authors' code: random scale (image
bilinear, mask nearest), padding to the crop size (image with the mean, mask
with the ignore value), random crop, random horizontal flip, and optionally
photometric jitter and mmseg's class-balanced crop (`cat_max_ratio`: the crop
re-drawn while one class dominates it). Everything runs inside `tf.data`.

Randomness is reproducible with `seed` and the same in every iterator of
the pipeline: every random draw (shuffle order, scale, jitter, crop window
and its re-draws, flip) is a stateless function of `seed`, the epoch and the
element's place in it, never of a seed generator that iterators share. So two iterations of a
repeated pipeline yield the same batches (Keras' JAX `fit` peeks with a first
iterator and trains from a second; every process of a data-parallel job
builds the same global stream), while its epochs differ. The flip is per
element, in the parallel map, with the mask flipped with its image. Keras'
preprocessing layers draw from a stateful seed generator, shared by all
iterators of a dataset and advanced in whatever order their prefetching
threads run (`RandomFlip` made the flips differ between iterations and
processes); Keras' `RandomCrop` (one crop window per batch, resizes small
inputs), `RandomZoom` (one fill value for images and masks) and
`RandomColorJitter` (its saturation leaves the value range on 0..255 images
in Keras 3.15) do not fit either and are not used.
"""

import math
import numbers
import random

import tensorflow as tf

from alignseg_keras.backbones.encoders import IMAGENET_RGB
from alignseg_keras.data.validation import IGNORE_INDEX
from alignseg_keras.multiprocess import pipeline_seed

IMAGENET_MEAN = IMAGENET_RGB["mean"]
# Photometric jitter of `photometric=True` (on the 0..255 scale; hue in turns).
PHOTOMETRIC_DEFAULTS = {
    "brightness": 32.0,
    "contrast": (0.5, 1.5),
    "saturation": (0.5, 1.5),
    "hue": 0.05,
}


def _whole_number(name, value, minimum, maximum=None):
    """`value` as an int, or a `ValueError` naming `name` for a bool, a string, a
    fraction (2.7 is not silently 2) or a value outside [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value != int(value) \
            or value < minimum or (maximum is not None and value > maximum):
        bounds = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"`{name}` must be an int {bounds}; received {value!r}.")
    return int(value)


def _positive_pair(name, value):
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair of ints (height, width); received {value!r}.") from None
    return _whole_number(name, first, 1), _whole_number(name, second, 1)


def _check_scale(scale_range, scale_step):
    try:
        low, high = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"`scale_range` must be a pair (min, max); received {scale_range!r}.") from None
    if not 0 < low <= high:
        raise ValueError(f"`scale_range` needs 0 < min <= max; received {scale_range!r}.")
    if scale_step is not None and not float(scale_step) > 0:
        raise ValueError(f"`scale_step` must be positive or None; received {scale_step!r}.")
    return low, high


def _check_photometric(photometric):
    if photometric is True:
        return dict(PHOTOMETRIC_DEFAULTS)
    if not photometric:
        return None
    if not isinstance(photometric, dict) or set(photometric) - set(PHOTOMETRIC_DEFAULTS):
        raise ValueError(
            "`photometric` must be a bool or a dict with keys among "
            f"{sorted(PHOTOMETRIC_DEFAULTS)}; received {photometric!r}."
        )
    return {key: photometric.get(key) for key in PHOTOMETRIC_DEFAULTS}


def _check_cat_max(cat_max_ratio, cat_max_tries):
    """Returns `(ratio or None, tries)`; a ratio of 1 turns the check off, as in mmseg."""
    cat_max_tries = _whole_number("cat_max_tries", cat_max_tries, 1)
    if cat_max_ratio is None:
        return None, cat_max_tries
    if isinstance(cat_max_ratio, bool) or not isinstance(cat_max_ratio, numbers.Real) \
            or not 0 < cat_max_ratio <= 1:
        raise ValueError(
            f"`cat_max_ratio` must be None or a number in (0, 1]; received {cat_max_ratio!r}."
        )
    return (float(cat_max_ratio) if cat_max_ratio < 1 else None), cat_max_tries


def _check_fill_mean(fill_mean):
    try:
        values = [float(v) for v in fill_mean]
    except (TypeError, ValueError):
        raise ValueError(f"`fill_mean` needs 3 numbers (the RGB mean of the model, e.g. "
                         f"model.image_converter.mean); received {fill_mean!r}.") from None
    if len(values) != 3:
        raise ValueError(f"`fill_mean` needs 3 values (RGB); received {fill_mean!r}.")
    return values


def _standardiser(dataset):
    """Checks that `dataset` yields unbatched (image, mask) pairs; returns the
    function that casts one to a float32 image `(H, W, 3)` and an int32 mask `(H, W)`."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"`dataset` must be a tf.data.Dataset of (image, mask); received {type(dataset).__name__}."
        )
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            f"`dataset` must yield (image, mask) pairs; its elements are {spec}."
        )
    image, mask = spec
    if image.shape.rank != 3 or image.shape[-1] not in (3, None):
        raise ValueError(
            "`dataset` images must be unbatched (height, width, 3); their shape is "
            f"{image.shape}. Pass the dataset before batching (images decoded with "
            "`tf.io.decode_image` need `expand_animations=False`). Images of an unknown "
            "channel count are made RGB: gray repeated, an alpha channel dropped."
        )
    squeeze = mask.shape.rank == 3 and mask.shape[-1] == 1
    if mask.shape.rank != 2 and not squeeze:
        raise ValueError(
            f"`dataset` masks must be unbatched (height, width); their shape is {mask.shape}."
        )

    def standardise(image, mask):
        mask = tf.squeeze(mask, -1) if squeeze else mask
        image = tf.cast(image, tf.float32)
        if image.shape[-1] is None:  # as decoded from files of any kind
            image = _as_rgb(image)
        return image, tf.cast(mask, tf.int32)

    return standardise


def _as_rgb(image):
    """`(H, W, 3)` from an image of any channel count, as `image_files.read_image`
    reads files: gray (and gray + alpha) repeated to three channels, an alpha dropped."""
    channels = tf.shape(image)[-1]
    rgb = tf.cond(
        channels < 3,
        lambda: tf.repeat(image[..., :1], 3, axis=-1),
        lambda: image[..., :3],
    )
    return tf.ensure_shape(rgb, (None, None, 3))


def random_scale(image, mask, scale_range, seed, scale_step=None):
    """Resizes an image (bilinear) and its mask (nearest) by one random factor.

    The new size is `size * scale` rounded to the nearest integer, a half to
    even (at least 1 pixel), in float64: OpenCV's `cv2.resize(image, None,
    fx=scale, fy=scale)`, the authors' augmentation (before 2026-12-07 it was
    rounded up: 1024x2048 at 0.8 became 820x1639 where theirs is 819x1638).

    Args:
        image: float32 `(H, W, 3)`.
        mask: int32 `(H, W)`.
        scale_range: `(min, max)` of the factor.
        seed: int tensor `(2,)`, stateless seed.
        scale_step: None (any factor) or a float: factors `min, min + step, ...,
            max` (the authors' code uses 0.7..2.1 in steps of 0.1).

    Returns:
        The resized `(image, mask)`.

    Example:
    ```python
    image, mask = random_scale(image, mask, (0.5, 2.0), tf.constant([1, 2]))
    ```
    """
    low, high = scale_range
    if scale_step:
        count = int(round((high - low) / scale_step)) + 1
        index = tf.random.stateless_uniform([], seed, 0, count, dtype=tf.int32)
        scale = tf.minimum(low + tf.cast(index, tf.float64) * scale_step, high)
    else:
        scale = tf.cast(tf.random.stateless_uniform([], seed, low, high), tf.float64)
    size = tf.cast(tf.shape(image)[:2], tf.float64) * scale
    size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)  # half to even, as cvRound
    image = tf.image.resize(image, size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, mask


def photometric_jitter(image, seed, brightness=None, contrast=None, saturation=None, hue=None):
    """Random brightness, contrast, saturation and hue of a 0..255 image.

    Args:
        image: float32 `(H, W, 3)` with values 0..255.
        seed: int tensor `(2,)`, stateless seed.
        brightness: max added delta on the 0..255 scale (e.g. 32), or None.
        contrast: `(lower, upper)` contrast factor, or None.
        saturation: `(lower, upper)` saturation factor, or None.
        hue: max hue shift in turns (0.05 = 18 degrees), or None.

    Returns:
        The jittered image, values 0..255.

    Example:
    ```python
    image = photometric_jitter(image, tf.constant([1, 2]), **PHOTOMETRIC_DEFAULTS)
    ```
    """
    seeds = tf.random.split(seed, 4)
    x = image / 255.0
    if brightness:
        x = tf.image.stateless_random_brightness(x, brightness / 255.0, seeds[0])
    if contrast:
        x = tf.image.stateless_random_contrast(x, *contrast, seed=seeds[1])
    x = tf.clip_by_value(x, 0.0, 1.0)
    if saturation:
        x = tf.image.stateless_random_saturation(x, *saturation, seed=seeds[2])
    if hue:
        x = tf.image.stateless_random_hue(x, hue, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def pad_to_size(image, mask, size, fill_mean=IMAGENET_MEAN, ignore_index=IGNORE_INDEX):
    """Pads the bottom and right of an image and mask to at least `size`.

    The image is padded with `fill_mean` (the model subtracts the mean, so the
    padding becomes 0) and the mask with `ignore_index`.

    Args:
        image: float32 `(H, W, 3)`.
        mask: int32 `(H, W)`.
        size: `(height, width)` to reach; larger inputs are left as they are.
        fill_mean: three floats, RGB padding value.
        ignore_index: int, mask padding value.

    Returns:
        The padded `(image, mask)`.

    Example:
    ```python
    image, mask = pad_to_size(image, mask, (512, 1024))
    ```
    """
    shape = tf.shape(mask)
    paddings = [[0, tf.maximum(size[0] - shape[0], 0)], [0, tf.maximum(size[1] - shape[1], 0)]]
    channels = [
        tf.pad(image[..., channel], paddings, constant_values=fill_mean[channel])
        for channel in range(3)
    ]
    mask = tf.pad(mask, paddings, constant_values=ignore_index)
    return tf.stack(channels, axis=-1), mask


def random_crop(image, mask, size, seed):
    """Crops the same random window of `size` from an image and its mask.

    Args:
        image: float32 `(H, W, 3)`, at least `size`.
        mask: int32 `(H, W)`.
        size: `(height, width)` of the window.
        seed: int tensor `(2,)`, stateless seed.

    Returns:
        The cropped `(image, mask)`.

    Example:
    ```python
    image, mask = random_crop(image, mask, (512, 1024), tf.constant([1, 2]))
    ```
    """
    stacked = tf.concat([image, tf.cast(mask, tf.float32)[..., None]], axis=-1)
    stacked = tf.image.stateless_random_crop(stacked, (size[0], size[1], 4), seed)
    return stacked[..., :3], tf.cast(stacked[..., 3], tf.int32)


def _crop_offset(shape, size, seed):
    """The `(top, left)` of the window `tf.image.stateless_random_crop` draws for
    `seed` from an `(H, W, channels)` tensor of spatial `shape`."""
    limit = tf.stack([shape[0] - size[0] + 1, shape[1] - size[1] + 1, 1])
    offset = tf.random.stateless_uniform([3], seed, maxval=tf.int32.max, dtype=tf.int32) % limit
    return offset[:2]


def crop_seeds(seed, cat_max_tries):
    """The seeds of the `cat_max_tries + 1` windows of `class_balanced_crop`: `seed`
    itself (so the first window is `random_crop`'s), then `seed` folded with the
    try index 1, 2, ..., `cat_max_tries`. Returns an int tensor `(cat_max_tries + 1, 2)`."""
    seed = tf.convert_to_tensor(seed)
    folded = [tf.random.experimental.stateless_fold_in(seed, index)
              for index in range(1, cat_max_tries + 1)]
    return tf.stack([seed] + [tf.cast(f, seed.dtype) for f in folded])


def crop_is_balanced(mask, cat_max_ratio, ignore_index=IGNORE_INDEX):
    """mmseg's test of a crop: more than one class among the pixels that are not
    `ignore_index`, and the largest class below `cat_max_ratio` of them.

    Args:
        mask: int32 `(h, w)` crop.
        cat_max_ratio: float in (0, 1].
        ignore_index: int, the value not counted.

    Returns:
        A bool scalar tensor.
    """
    labels, _, counts = tf.unique_with_counts(tf.reshape(mask, [-1]))
    counts = tf.cast(tf.boolean_mask(counts, tf.not_equal(labels, ignore_index)), tf.float64)
    share = tf.reduce_max(counts) / tf.reduce_sum(counts)  # -inf / 0 when empty, unused
    return tf.logical_and(tf.size(counts) > 1, share < cat_max_ratio)


def class_balanced_crop(image, mask, size, seed, cat_max_ratio, cat_max_tries=10,
                        ignore_index=IGNORE_INDEX):
    """`random_crop` re-drawn while one class dominates, mmseg's `RandomCrop(cat_max_ratio)`.

    Up to `cat_max_tries` windows are tested with `crop_is_balanced`; the first
    that passes is cropped, and if none does, one more window (drawn like the
    others) is cropped untested: at most `cat_max_tries` re-draws, the last one
    kept, as mmseg does (`cat_max_tries=10` there). Window `t` comes from
    `crop_seeds(seed, cat_max_tries)[t]`, so window 0 is `random_crop`'s with the
    same seed, and the result is a stateless function of `seed`. The test stops
    at the first balanced window (`tf.while_loop`).

    Args:
        image: float32 `(H, W, 3)`, at least `size`.
        mask: int32 `(H, W)`.
        size: `(height, width)` of the window.
        seed: int tensor `(2,)`, stateless seed.
        cat_max_ratio: float in (0, 1): the largest share of the valid pixels
            one class may cover (mmseg's test is `share < cat_max_ratio`).
        cat_max_tries: int >= 1, how many windows are tested.
        ignore_index: int, mask value that is not counted.

    Returns:
        The cropped `(image, mask)`.

    Example:
    ```python
    image, mask = class_balanced_crop(image, mask, (512, 1024), tf.constant([1, 2]), 0.75)
    ```
    """
    shape = tf.shape(mask)
    checks = [tf.debugging.assert_greater_equal(shape, tf.constant(size, tf.int32),
                                                message="The crop is larger than the mask.")]
    with tf.control_dependencies(checks):
        offsets = tf.stack([_crop_offset(shape, size, s)
                            for s in tf.unstack(crop_seeds(seed, cat_max_tries))])

    def window(tensor, offset):
        return tf.slice(tensor, offset, size) if tensor.shape.rank == 2 else \
            tf.slice(tensor, tf.concat([offset, [0]], 0), [size[0], size[1], -1])

    def searching(index):
        return tf.logical_and(
            index < cat_max_tries,
            tf.logical_not(crop_is_balanced(window(mask, offsets[index]), cat_max_ratio, ignore_index)),
        )

    (index,) = tf.while_loop(searching, lambda index: (index + 1,), (tf.constant(0),))
    offset = offsets[index]
    image, mask = window(image, offset), window(mask, offset)
    return tf.ensure_shape(image, [size[0], size[1], 3]), tf.ensure_shape(mask, [size[0], size[1]])


def random_flip(image, mask, seed):
    """Flips an image and its mask horizontally together, with probability 1/2.

    Args:
        image: float32 `(H, W, 3)`.
        mask: int32 `(H, W)`.
        seed: int tensor `(2,)`, stateless seed.

    Returns:
        The `(image, mask)`, both flipped or both as they were.

    Example:
    ```python
    image, mask = random_flip(image, mask, tf.constant([1, 2]))
    ```
    """
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: (tf.reverse(image, [1]), tf.reverse(mask, [1])),
                   lambda: (image, mask))


def _hash_pair(first, second):
    """Two int64 drawn statelessly from the seed `(first, second)`: a key per pair."""
    seed = tf.stack([tf.cast(first, tf.int64), tf.cast(second, tf.int64)])
    return tf.random.stateless_uniform([2], seed, minval=None, maxval=None, dtype=tf.int64)


def _examples_with_seeds(dataset, seed, shuffle, repeat):
    """`(example, element seed)` pairs, the seed drawn statelessly from a key and the
    element's index in the stream.

    Repeated, the stream is built anew inside `flat_map` for every iterator: its
    shuffle (with `seed`) gets a seed generator of its own there, so every
    iterator yields the same stream, and each pass over `dataset` in it is
    reshuffled; the key is `seed`. Without `repeat`, every iteration is one
    epoch: the shuffle's generator is shared by the iterators and reshuffles for
    each new one, and the key is drawn when the iterator starts (`Dataset.random`):
    the n-th iteration of pipelines built alike is the same, and iterations
    differ. (A shuffle seed that is a tensor, such as one per epoch, fails in
    `tf.data` when TensorFlow's global seed is 0.)
    """

    def shuffled(examples):
        if not shuffle:
            return examples
        return examples.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)

    def numbered(examples, keys):
        return tf.data.Dataset.zip(examples, keys, tf.data.Dataset.counter()).map(
            lambda example, key, index: (example, _hash_pair(key, index)))

    if repeat:
        stream = tf.data.Dataset.from_tensors(tf.constant(seed, tf.int64))
        return stream.flat_map(lambda key: numbered(
            shuffled(dataset).repeat(), tf.data.Dataset.from_tensors(key).repeat()))
    key = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    keys = key.flat_map(lambda value: tf.data.Dataset.from_tensors(value).repeat())
    return numbered(shuffled(dataset), keys)


def training_pipeline(
    dataset,
    crop_size=(769, 769),
    batch_size=8,
    scale_range=(0.5, 2.0),
    flip=True,
    photometric=False,
    ignore_index=IGNORE_INDEX,
    fill_mean=IMAGENET_MEAN,
    shuffle=64,
    repeat=True,
    seed=None,
    scale_step=None,
    cat_max_ratio=None,
    cat_max_tries=10,
):
    """Augments, shuffles and batches `(image, mask)` pairs for training.

    Per example: random scale (image bilinear, mask nearest), optional
    photometric jitter, padding to `crop_size` (image with `fill_mean`, mask
    with `ignore_index`), a random crop (optionally re-drawn while one class
    dominates it, `cat_max_ratio`) and a random horizontal flip (image and mask
    together).

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image (H, W, 3), mask (H, W))`
            (e.g. `load_cityscapes`), any numeric dtypes.
        crop_size: `(height, width)` of the crops (769x769 in the authors'
            Cityscapes code).
        batch_size: int; incomplete batches are dropped.
        scale_range: `(min, max)` random scale (paper: 0.5..2.0; the
            authors' code: 0.7..2.1); `(1, 1)` disables scaling.
        flip: bool, random horizontal flip.
        photometric: False, True (`PHOTOMETRIC_DEFAULTS`) or a dict with some
            of the keys `brightness`, `contrast`, `saturation`, `hue`.
        ignore_index: int, mask value of the padding.
        fill_mean: three floats, RGB value of the image padding (the model's mean).
        shuffle: int, shuffle buffer size (decoded examples); 0 (or False)
            disables. True is refused (a buffer of 1: no shuffling). A buffer
            mixes neighbouring examples only: give a sorted dataset (Cityscapes'
            files are sorted by city) its files shuffled: `shuffle_files=True,
            seed=..., repeat=True` of the loaders, the same stream in every
            iterator and process.
        repeat: bool, repeat forever (then give `fit` a `steps_per_epoch`):
            every iterator yields the same stream, each pass over `dataset`
            reshuffled and augmented anew. False: one pass per iteration, each
            iteration a new epoch.
        seed: int or None; an int makes the order and every augmentation
            reproducible: the same in every process, and in every iterator
            of a repeated pipeline. None: drawn anew, except in a
            multi-process JAX job, where it is the seed the job agreed on
            (`multiprocess.pipeline_seed`), the same in every process.
        scale_step: None (continuous scales) or a float step between scales
            (0.1 in the authors' code).
        cat_max_ratio: None, or a float in (0, 1]: mmseg's class-balanced crop
            (`class_balanced_crop`): the crop window is re-drawn, up to
            `cat_max_tries` times, while one class covers `cat_max_ratio` or more
            of its pixels that are not `ignore_index` (or it holds fewer than
            two classes); the last re-drawn window is kept. mmseg's configs use
            0.75. None or 1 (mmseg's default) crops once.
        cat_max_tries: int >= 1, the re-draws of `cat_max_ratio` (mmseg: 10).

    Returns:
        A dataset of `(images float32 (B, h, w, 3) in 0..255, masks int32 (B, h, w))`.

    Example:
    ```python
    train = training_pipeline(load_cityscapes(root, "train", shuffle_files=True, seed=0, repeat=True), crop_size=(769, 769),
                              batch_size=8, scale_range=(0.5, 2.0), seed=0)
    model.fit(train, steps_per_epoch=1000, epochs=40)
    ```
    """
    crop = _positive_pair("crop_size", crop_size)
    scale_range = _check_scale(scale_range, scale_step)
    jitter = _check_photometric(photometric)
    fill_mean = _check_fill_mean(fill_mean)
    cat_max_ratio, cat_max_tries = _check_cat_max(cat_max_ratio, cat_max_tries)
    batch_size = _whole_number("batch_size", batch_size, 1)
    ignore_index = _whole_number("ignore_index", ignore_index, 0, IGNORE_INDEX)
    # A buffer size: `shuffle=True` would be a buffer of one, which shuffles nothing.
    shuffle = 0 if shuffle is False else _whole_number("shuffle", shuffle, 0)
    standardise = _standardiser(dataset)
    seed = pipeline_seed(seed, random.SystemRandom().randrange)  # a JAX job: the agreed one
    dataset = _examples_with_seeds(dataset, seed, shuffle, repeat)

    def augment(example, element_seed):
        image, mask = standardise(*example)
        scale_seed, jitter_seed, crop_seed, flip_seed = tf.unstack(tf.random.split(element_seed, 4))
        image, mask = random_scale(image, mask, scale_range, scale_seed, scale_step)
        if jitter:
            image = photometric_jitter(image, jitter_seed, **jitter)
        image, mask = pad_to_size(image, mask, crop, fill_mean, ignore_index)
        if cat_max_ratio is None:
            image, mask = random_crop(image, mask, crop, crop_seed)
        else:
            image, mask = class_balanced_crop(image, mask, crop, crop_seed, cat_max_ratio,
                                              cat_max_tries, ignore_index)
        if flip:
            image, mask = random_flip(image, mask, flip_seed)
        return image, mask

    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_pipeline(dataset, batch_size=1):
    """Batches `(image, mask)` pairs for evaluation, without augmentation.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image (H, W, 3), mask (H, W))`.
        batch_size: int; more than 1 needs the images of each batch to have
            one size (Cityscapes, synthetic scenes; ADE20K's differ): an image
            that differs from the first of its batch fails with an
            `InvalidArgumentError` naming `batch_size`.

    Returns:
        A dataset of `(images float32 (B, H, W, 3) in 0..255, masks int32 (B, H, W))`.

    Example:
    ```python
    val = evaluation_pipeline(load_cityscapes(root, "val"))
    model.evaluate(val)
    ```
    """
    batch_size = _whole_number("batch_size", batch_size, 1)
    standardise = _standardiser(dataset)
    dataset = dataset.map(standardise, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size > 1:
        # The scan's state: the example's index, the size of the first of its batch (made
        # here: a tensor made when the module is imported would start TensorFlow's runtime,
        # after which devices and collective ops can no longer be configured).
        first_of_batch = (tf.constant(0, tf.int64), tf.zeros(2, tf.int32))
        dataset = dataset.scan(first_of_batch, _one_size_per_batch(batch_size))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _one_size_per_batch(batch_size):
    """A `Dataset.scan` step passing examples on, that fails with a message naming
    `batch_size` when an example's image differs in size from the first of its batch
    (`batch` failed with "Cannot add tensor to the batch: number of elements does not
    match", naming neither)."""

    def step(state, example):
        index, first_size = state
        image, mask = example
        size = tf.shape(image)[:2]
        first_size = tf.where(index % batch_size == 0, size, first_size)
        check = tf.debugging.assert_equal(
            size, first_size, message=(
                f"evaluation_pipeline(batch_size={batch_size}) batches images of one size, and "
                "an image differs from the first of its batch (the sizes follow, height and "
                "width): use batch_size=1 for images of different sizes (as alignseg evaluate "
                "reads them)"))
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        return (index + 1, first_size), (image, mask)

    return step
