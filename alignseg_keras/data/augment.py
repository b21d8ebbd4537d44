"""The in-graph `tf.data` augmentation pipeline for training and evaluation.

Training follows the paper and the authors' code: random scale (image
bilinear, mask nearest), padding to the crop size (image with the mean, mask
with the ignore value), random crop, random horizontal flip, and optionally
photometric jitter. Everything runs inside `tf.data`.

Randomness is reproducible with `seed` and the same in every iterator of
the pipeline: every random draw (shuffle order, scale, jitter, crop window,
flip) is a stateless function of `seed`, the epoch and the element's place in
it, never of a seed generator that iterators share. So two iterations of a
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

import random

import tensorflow as tf

from alignseg_keras.backbones.encoders import IMAGENET_RGB
from alignseg_keras.data.validation import IGNORE_INDEX

IMAGENET_MEAN = IMAGENET_RGB["mean"]
# Photometric jitter of `photometric=True` (on the 0..255 scale; hue in turns).
PHOTOMETRIC_DEFAULTS = {
    "brightness": 32.0,
    "contrast": (0.5, 1.5),
    "saturation": (0.5, 1.5),
    "hue": 0.05,
}


def _positive_pair(name, value):
    try:
        first, second = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair of ints (height, width); received {value!r}.") from None
    if min(first, second) < 1:
        raise ValueError(f"`{name}` must be positive; received {value!r}.")
    return first, second


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


def _check_fill_mean(fill_mean):
    values = [float(v) for v in fill_mean]
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
            f"{image.shape}. Pass the dataset before batching."
        )
    squeeze = mask.shape.rank == 3 and mask.shape[-1] == 1
    if mask.shape.rank != 2 and not squeeze:
        raise ValueError(
            f"`dataset` masks must be unbatched (height, width); their shape is {mask.shape}."
        )

    def standardise(image, mask):
        mask = tf.squeeze(mask, -1) if squeeze else mask
        return tf.cast(image, tf.float32), tf.cast(mask, tf.int32)

    return standardise


def random_scale(image, mask, scale_range, seed, scale_step=None):
    """Resizes an image (bilinear) and its mask (nearest) by one random factor.

    The new size is `ceil(size * scale)` (at least 1 pixel).

    Args:
        image: float32 `(H, W, 3)`.
        mask: int32 `(H, W)`.
        scale_range: `(min, max)` of the factor.
        seed: int tensor `(2,)`, stateless seed.
        scale_step: None (any factor) or a float: factors `min, min + step, ...,
            max` (the authors' code uses 0.7..2.0 in steps of 0.1).

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
        scale = tf.minimum(low + tf.cast(index, tf.float32) * scale_step, high)
    else:
        scale = tf.random.stateless_uniform([], seed, low, high)
    size = tf.cast(tf.shape(image)[:2], tf.float32) * scale
    # The small margin keeps exact products (e.g. 100 x 0.7) from rounding up.
    size = tf.maximum(tf.cast(tf.math.ceil(size - 1e-3), tf.int32), 1)
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
):
    """Augments, shuffles and batches `(image, mask)` pairs for training.

    Per example: random scale (image bilinear, mask nearest), optional
    photometric jitter, padding to `crop_size` (image with `fill_mean`, mask
    with `ignore_index`), a random crop and a random horizontal flip (image
    and mask together).

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image (H, W, 3), mask (H, W))`
            (e.g. `load_cityscapes`), any numeric dtypes.
        crop_size: `(height, width)` of the crops (769x769 in the authors'
            Cityscapes code).
        batch_size: int; incomplete batches are dropped.
        scale_range: `(min, max)` random scale (paper: 0.5..2.0; the
            authors' code: 0.7..2.0); `(1, 1)` disables scaling.
        flip: bool, random horizontal flip.
        photometric: False, True (`PHOTOMETRIC_DEFAULTS`) or a dict with some
            of the keys `brightness`, `contrast`, `saturation`, `hue`.
        ignore_index: int, mask value of the padding.
        fill_mean: three floats, RGB value of the image padding (the model's mean).
        shuffle: int, shuffle buffer size (decoded examples); 0 disables.
        repeat: bool, repeat forever (then give `fit` a `steps_per_epoch`):
            every iterator yields the same stream, each pass over `dataset`
            reshuffled and augmented anew. False: one pass per iteration, each
            iteration a new epoch.
        seed: int or None; an int makes the order and every augmentation
            reproducible: the same in every process, and in every iterator
            of a repeated pipeline.
        scale_step: None (continuous scales) or a float step between scales
            (0.1 in the authors' code).

    Returns:
        A dataset of `(images float32 (B, h, w, 3) in 0..255, masks int32 (B, h, w))`.

    Example:
    ```python
    train = training_pipeline(load_cityscapes(root, "train"), crop_size=(769, 769),
                              batch_size=8, scale_range=(0.5, 2.0), seed=0)
    model.fit(train, steps_per_epoch=1000, epochs=40)
    ```
    """
    crop = _positive_pair("crop_size", crop_size)
    scale_range = _check_scale(scale_range, scale_step)
    jitter = _check_photometric(photometric)
    fill_mean = _check_fill_mean(fill_mean)
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if not 0 <= int(ignore_index) <= IGNORE_INDEX:
        raise ValueError(f"`ignore_index` must be in 0..255; received {ignore_index!r}.")
    standardise = _standardiser(dataset)
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
    dataset = _examples_with_seeds(dataset, seed, int(shuffle), repeat)

    def augment(example, element_seed):
        image, mask = standardise(*example)
        scale_seed, jitter_seed, crop_seed, flip_seed = tf.unstack(tf.random.split(element_seed, 4))
        image, mask = random_scale(image, mask, scale_range, scale_seed, scale_step)
        if jitter:
            image = photometric_jitter(image, jitter_seed, **jitter)
        image, mask = pad_to_size(image, mask, crop, fill_mean, int(ignore_index))
        image, mask = random_crop(image, mask, crop, crop_seed)
        if flip:
            image, mask = random_flip(image, mask, flip_seed)
        return image, mask

    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(int(batch_size), drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_pipeline(dataset, batch_size=1):
    """Batches `(image, mask)` pairs for evaluation, without augmentation.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image (H, W, 3), mask (H, W))`.
        batch_size: int; more than 1 needs images of one size (Cityscapes,
            synthetic scenes), ADE20K images differ in size.

    Returns:
        A dataset of `(images float32 (B, H, W, 3) in 0..255, masks int32 (B, H, W))`.

    Example:
    ```python
    val = evaluation_pipeline(load_cityscapes(root, "val"))
    model.evaluate(val)
    ```
    """
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    standardise = _standardiser(dataset)
    dataset = dataset.map(standardise, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
