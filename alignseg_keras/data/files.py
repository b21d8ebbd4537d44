"""`tf.data` datasets of (image, mask) pairs read from files, and `from_files`."""

import atexit
import gc
import os
import random
import re

import numpy as np
import tensorflow as tf

from alignseg_keras.data.decoding import read_example
from alignseg_keras.data.labels import label_mapping
from alignseg_keras.data.validation import check_same_size
from alignseg_keras.data.validation import require_files
from alignseg_keras.multiprocess import pipeline_seed

# Stands for "no label file" in the path tensor: the mask is all ignore (255).
UNLABELLED = ""

# A pipeline whose iteration failed (a bad file) is often left in a reference cycle
# (the error's traceback holds the frames that hold its iterator), freed only by the
# garbage collector. Freed during the interpreter's shutdown, its parallel map waits
# for reads that can no longer take Python's lock, and the process never exits; so
# the garbage is collected before the shutdown, while they still can.
atexit.register(gc.collect)


def _reader(mapping, num_classes):
    def read_files_of_example(image_path, mask_path):
        mask_path = os.fsdecode(mask_path)
        try:
            return read_example(
                os.fsdecode(image_path), mask_path or None, mapping, num_classes
            )
        except (ValueError, FileNotFoundError) as error:
            # A name that is not UTF-8 (os.fsdecode's surrogate escapes) would reach
            # TensorFlow as an empty message: its bytes are written as escapes ("\xe9").
            text = str(error).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise type(error)(text) from None

    return read_files_of_example


# The name of the reader in the traceback of a pipeline's error (`tf_data_checks`).
READER_NAME = _reader(None, None).__name__


def endless_file_order(count, shuffle_files, seed=None):
    """File indices, pass after pass without end; with `shuffle_files` each pass in
    a permutation drawn statelessly from `seed` and the pass number.

    `Dataset.shuffle(reshuffle_each_iteration=True)` draws its permutations from a
    seed generator that all iterators of the dataset share: an iterator that
    reads ahead (Keras' JAX `fit` peeks with a first one) can start a pass
    before another, which then gets the next permutation, so iterators and the
    processes of a job need not agree. Here every iterator and process yields
    the same stream (`seed` None: a key drawn once, when the dataset is built; in
    a multi-process JAX job, the job's agreed seed: `multiprocess.pipeline_seed`).
    """
    if not shuffle_files:
        return tf.data.Dataset.range(count).repeat()
    key = pipeline_seed(seed, random.randrange)
    return tf.data.Dataset.counter().flat_map(lambda epoch: tf.data.Dataset.from_tensor_slices(
        tf.argsort(tf.random.stateless_uniform((count,), seed=tf.stack([tf.constant(key, tf.int64), epoch])))))


def paired_dataset(image_paths, mask_paths, mapping=None, num_classes=None,
                   shuffle_files=False, seed=None, repeat=False):
    """A dataset that reads and validates `(image, mask)` files in parallel.

    Files are decoded by Pillow inside `tf.numpy_function`, so that a bad file
    fails with a message naming it (surfacing as a `tf.errors.OpError` whose
    message holds the `ValueError` text).

    Args:
        image_paths: list of image files.
        mask_paths: list of label files (same length), or None for unlabelled
            images whose masks are all 255.
        mapping: a `LabelMapping` from stored values to train ids, or None.
        num_classes: int or None, train ids must be below it (or 255).
        shuffle_files: bool, shuffle the file order on every iteration
            (cheaper than shuffling decoded images).
        seed: int or None, seed of the file shuffle.
        repeat: bool, an endless stream of passes (`endless_file_order`).

    Returns:
        A dataset of `(image uint8 (H, W, 3), mask uint8 (H, W))`.

    Example:
    ```python
    dataset = paired_dataset(["a.jpg"], ["a.png"], num_classes=150)
    ```
    """
    # As bytes: a file name that is not valid UTF-8 (os.fsdecode's surrogate escapes)
    # cannot be a string tensor, and `read` decodes them back.
    image_paths = [os.fsencode(path) for path in image_paths]
    if mask_paths is None:
        mask_paths = [UNLABELLED] * len(image_paths)
    mask_paths = [os.fsencode(path) for path in mask_paths]
    if repeat:
        order = endless_file_order(len(image_paths), shuffle_files, seed)
        paths = tf.constant(image_paths), tf.constant(mask_paths)
        dataset = order.map(lambda index: (tf.gather(paths[0], index), tf.gather(paths[1], index)))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
        if shuffle_files:
            dataset = dataset.shuffle(len(image_paths), seed=seed, reshuffle_each_iteration=True)
    read = _reader(mapping, num_classes)

    def decode(image_path, mask_path):
        image, mask = tf.numpy_function(
            read, [image_path, mask_path], (tf.uint8, tf.uint8), stateful=False
        )
        return tf.ensure_shape(image, (None, None, 3)), tf.ensure_shape(mask, (None, None))

    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _stems(paths):
    """The paths without their extensions, numbers written without leading zeros (so that
    `s_01.png` pairs with `s_1_mask.png`: numbers are compared by value)."""
    return [re.sub(r"\d+", lambda number: str(int(number[0])), os.path.splitext(os.fspath(path))[0])
            for path in paths]


def _keys(stems, prefix, suffix):
    return [stem[prefix : len(stem) - suffix] for stem in stems]


def _name_keys(stems):
    """Each stem less the longest prefix and suffix all of them share, neither ending
    inside a number: the part of the name that tells the files apart. (Numbers are
    kept whole: images `frame_10`..`frame_19` and labels `frame_20_mask`..`frame_29_mask`
    would otherwise share `frame_1` and `frame_2` and pair by their last digit.)"""
    return _keys(stems, *next(_trims(stems)))


def _cuts_number(texts, length):
    """Whether a prefix of `length` that all `texts` share ends inside a number: its
    last character and a text's next one are digits."""
    return bool(length) and texts[0][length - 1].isdigit() and any(
        len(text) > length and text[length].isdigit() for text in texts)


def _trims(stems):
    """`(prefix, suffix)` lengths of the shared prefixes and suffixes of `stems`,
    longest first, none cutting a number."""
    longest_prefix = len(os.path.commonprefix(stems))
    for prefix in range(longest_prefix, -1, -1):
        if _cuts_number(stems, prefix):
            continue
        rests = [stem[prefix:][::-1] for stem in stems]
        for suffix in range(len(os.path.commonprefix(rests)), -1, -1):
            if not _cuts_number(rests, suffix):
                yield prefix, suffix


def _keys_matching(stems, wanted):
    """The keys of `stems` under a shared prefix and suffix (longest first, numbers
    whole) that are exactly the distinct keys `wanted`, or None. The longest shared
    prefix may take the start of a key (stems `photo` and `photo_2_mask` share
    `photo`, where the images `photo` and `photo_2` make the keys `` and `_2`)."""
    for prefix, suffix in _trims(stems):
        if stems[0][prefix : len(stems[0]) - suffix] not in wanted:
            continue  # one key tells, before all are made
        keys = _keys(stems, prefix, suffix)
        if set(keys) == wanted and len(keys) == len(wanted):
            return keys
    return None


def _best_keys(stems, wanted):
    """The keys of `stems` under the shared prefix and suffix that match most of
    `wanted` (for naming the files that do not pair), and that number."""
    best = (_keys(stems, 0, 0), -1)
    most = min(len(wanted), len(stems))
    for prefix, suffix in _trims(stems):
        keys = _keys(stems, prefix, suffix)
        matched = len(set(keys) & wanted)
        if matched > best[1]:
            best = (keys, matched)
        if matched == most:  # none can match more
            break
    return best


def check_file_headers(image_paths, mask_paths, shown=5):
    """Raises a `ValueError` naming the files that cannot be opened as images, and the
    pairs whose image and label sizes differ, from the files' headers alone (no pixel
    is decoded: a few seconds for thousands of files), before a long run meets them.
    Pixels that cannot be decoded and labels outside the classes are found as the
    files are read.

    Args:
        image_paths: list of image files.
        mask_paths: list of label files, paired with the images by position.
        shown: how many problems the message lists.

    Example:
    ```python
    check_file_headers(["a.jpg"], ["a.png"])
    ```
    """
    from alignseg_keras.image_files import displayed_size

    problems = []
    for image_path, mask_path in zip(image_paths, mask_paths):
        try:  # the pipeline's own size check, on the headers' sizes
            check_same_size(displayed_size(image_path), displayed_size(mask_path), image_path,
                            mask_path)
        except (ValueError, OSError) as error:
            problems.append(str(error).rstrip("."))
    if problems:
        more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
        raise ValueError(f"{len(problems)} of {len(image_paths)} image and label pairs cannot be "
                         f"used{more}: " + "; ".join(problems[:shown]) + ".")


def pair_by_name(image_paths, mask_paths):
    """The label files reordered to pair with `image_paths` by name.

    A name's key is its path without the extension, less the prefix and suffix
    that all images (all label files) share: `img/frame_1.png` pairs with
    `ann/frame_1_mask.png`, and `frame_10` with `frame_10_mask` however the two
    lists are sorted (sorted separately, `frame_1_mask` comes after `frame_10_mask`).

    Args:
        image_paths: list of image files.
        mask_paths: list of label files, one per image, in any order.

    Returns:
        The label files in the order of `image_paths`.

    Raises:
        ValueError: some names have no counterpart, among them where the
            lists differ in length (the files named in the message), or two
            names of one list differ only in their extension.

    Example:
    ```python
    pair_by_name(["a/x1.jpg", "a/x2.jpg"], ["b/x2_label.png", "b/x1_label.png"])
    # ["b/x1_label.png", "b/x2_label.png"]
    ```
    """
    image_paths, mask_paths = list(image_paths), list(mask_paths)
    image_stems, mask_stems = _stems(image_paths), _stems(mask_paths)
    for kind, paths, stems in (("images", image_paths, image_stems),
                               ("label files", mask_paths, mask_stems)):
        if len(set(stems)) < len(paths):
            raise ValueError(f"Two {kind} differ only in their extension or in the leading "
                             f"zeros of a number: {sorted(paths)}.")
    if len(image_paths) != len(mask_paths) or not image_paths:
        raise _unpaired_error(image_paths, image_stems, mask_paths, mask_stems)
    image_keys, mask_keys = _name_keys(image_stems), _name_keys(mask_stems)
    if set(image_keys) != set(mask_keys):  # one side's shared prefix took part of a key
        matching = _keys_matching(mask_stems, set(image_keys))
        if matching is not None:
            mask_keys = matching
        else:
            image_keys = _keys_matching(image_stems, set(mask_keys)) or image_keys
    masks = dict(zip(mask_keys, mask_paths))
    images = dict(zip(image_keys, image_paths))
    if masks.keys() != images.keys():
        raise _unpaired_error(image_paths, image_stems, mask_paths, mask_stems)
    return [masks[key] for key in images]


def _unpaired_error(image_paths, image_stems, mask_paths, mask_stems):
    """The `ValueError` naming the files that do not pair, under the keys that pair most
    (images `f0`..`f3` with labels `f0_mask`, `f1_mask`, `g2_mask`, `f3_mask`: `f2` and
    `g2_mask`, not the first of each list; a label missing, or a stray `legend.png` among
    the labels: that file, not every one)."""
    if not image_paths or not mask_paths:
        return ValueError(f"{len(image_paths)} images and {len(mask_paths)} label files: "
                          "give one label file per image.")
    image_keys, mask_keys = _keys_pairing_most(image_stems, mask_stems)
    image_key_set, mask_key_set = set(image_keys), set(mask_keys)
    lonely_images = [path for key, path in zip(image_keys, image_paths) if key not in mask_key_set]
    lonely_masks = [path for key, path in zip(mask_keys, mask_paths) if key not in image_key_set]

    def listed(paths):
        return ", ".join(f"'{path}'" for path in paths[:5]) + (
            f" and {len(paths) - 5} more" if len(paths) > 5 else "")

    lonely = ([f"no label file for {listed(lonely_images)}"] if lonely_images else []) + (
        [f"no image for {listed(lonely_masks)}"] if lonely_masks else [])
    return ValueError(
        f"{len(image_paths)} images and {len(mask_paths)} label files do not pair up by name "
        f"(the part of the names that differs between files): {'; '.join(lonely)}. Give one "
        "label file per image, named after it, e.g. 'frame_1.png' and 'frame_1_mask.png'."
    )


def _keys_pairing_most(image_stems, mask_stems):
    """`(image_keys, mask_keys)` under which the most names pair: each side's keys under
    the prefix and suffix all its names share or most of them share (so that a stray
    file does not take the others' away), with the other side's as they are or under its
    trim that matches them best."""
    image_sides = (_name_keys(image_stems), _majority_keys(image_stems))
    mask_sides = (_name_keys(mask_stems), _majority_keys(mask_stems))
    candidates = [(images, masks) for images in image_sides for masks in mask_sides]
    candidates += [(images, _best_keys(mask_stems, set(images))[0]) for images in image_sides]
    candidates += [(_best_keys(image_stems, set(masks))[0], masks) for masks in mask_sides]
    return max(candidates, key=lambda pair: len(set(pair[0]) & set(pair[1])))


def _majority_keys(stems):
    """Keys under the prefix and suffix that more than half of `stems` share (numbers
    whole); a stem without them keeps itself whole as its key."""
    prefix = _majority_prefix(stems)
    rests = [stem[len(prefix):] for stem in stems if stem.startswith(prefix)]
    suffix = _majority_prefix([rest[::-1] for rest in rests], len(stems))[::-1]
    return [stem[len(prefix) : len(stem) - len(suffix)]
            if stem.startswith(prefix) and stem[len(prefix):].endswith(suffix) else stem
            for stem in stems]


def _majority_prefix(texts, count=None):
    """The longest prefix, not ending inside a number, of more than half of `count`
    texts (default: of `texts`), or "". Such a prefix is one of the middle text's in sorted order."""
    count = len(texts) if count is None else count
    if not texts:
        return ""
    middle = sorted(texts)[len(texts) // 2]
    for length in range(len(middle), 0, -1):
        sharing = [text for text in texts if text.startswith(middle[:length])]
        if 2 * len(sharing) > count and not _cuts_number(sharing, length):
            return middle[:length]
    return ""


def from_files(image_paths, mask_paths, num_classes=None, label_map=None,
               shuffle_files=False, seed=None, repeat=False):
    """A segmentation dataset from your own image and label files.

    Images may be PNG, JPEG or anything Pillow reads (converted to RGB); label
    files must hold one class id per pixel (8-bit, palette or 16-bit PNG; a
    palette PNG gives its palette indices). Every label map must have its
    image's size and, after `label_map`, values in [0, num_classes) or 255.

    Args:
        image_paths: list of image files.
        mask_paths: list of label files, one per image in the same order, or
            None for unlabelled images (masks all 255, for prediction).
        num_classes: int or None; labels must be below it (or 255). None
            checks only that labels fit in 0..255: pass it to catch bad labels.
        label_map: None, a dict `{stored value: train id}` (values not listed
            become 255), or a 1-D integer lookup array `label_map[stored]`
            (values beyond its end are an error).
        shuffle_files: bool, shuffle the file order on every iteration.
        seed: int or None, seed of the file shuffle.
        repeat: bool, an endless stream of passes over the files; with
            `shuffle_files` each pass in its own permutation drawn statelessly
            from `seed` and the pass number, the same in every iterator and
            every process of a job (training; `alignseg train` uses it).

    Returns:
        A `tf.data.Dataset` of `(image uint8 (H, W, 3), mask uint8 (H, W))`.

    Raises:
        FileNotFoundError: an image or label file does not exist.
        ValueError: the lists differ in length or are empty, or `label_map` or
            `num_classes` is invalid. Unreadable files, size mismatches and
            out-of-range labels raise, while iterating, a `tf.errors.OpError`
            whose message names the file and the value.

    Example:
    ```python
    dataset = from_files(["a.jpg", "b.jpg"], ["a.png", "b.png"], num_classes=3,
                         label_map={0: 255, 1: 0, 2: 1, 3: 2})
    ```
    """
    for name, paths in (("image_paths", image_paths), ("mask_paths", mask_paths)):
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise ValueError(
                f"`{name}` must be a list of files; received the single path {paths!r}. "
                f"Pass [{paths!r}]."
            )
    image_paths = list(image_paths)
    if not image_paths:
        raise ValueError("`image_paths` is empty: no images to read.")
    if mask_paths is not None:
        mask_paths = list(mask_paths)
        if len(mask_paths) != len(image_paths):
            raise ValueError(
                f"`image_paths` has {len(image_paths)} files but `mask_paths` has "
                f"{len(mask_paths)}; give one label file per image."
            )
        require_files(mask_paths, "Label")
    require_files(image_paths, "Image")
    mapping, num_classes = label_mapping(label_map, num_classes)
    if mask_paths is not None:
        warn_if_only_class_0_is_labelled(mask_paths, mapping, num_classes)
    return paired_dataset(image_paths, mask_paths, mapping, num_classes, shuffle_files, seed, repeat)


# How many label files `warn_if_only_class_0_is_labelled` reads.
LABEL_SAMPLE = 8


def warn_if_only_class_0_is_labelled(mask_paths, mapping, num_classes, count=LABEL_SAMPLE):
    """Warns (a `UserWarning`) when the first `count` label files hold the ignore value
    255 and none of the classes 1..num_classes-1 (0 and 255 only, or 255 alone), after
    `mapping`.

    Most likely binary masks stored as 0 and 255, read with `num_classes=2`: every
    object pixel is 255, ignored by every loss and metric, and the model learns
    the background alone, without an error. Files that cannot be read are left to
    the pipeline, which names them.

    Args:
        mask_paths: list of label files.
        mapping: a `LabelMapping` or None.
        num_classes: int or None (no check).
        count: how many files to read, from the first.
    """
    import warnings

    from alignseg_keras.data.validation import IGNORE_INDEX
    from alignseg_keras.image_files import read_label_map

    if num_classes is None or num_classes < 2:
        return
    seen = set()
    for path in mask_paths[:count]:
        try:
            stored = read_label_map(path)
            values = stored if mapping is None else mapping(stored, path)
        except (ValueError, OSError):
            return
        seen |= set(np.unique(values).tolist())
        if seen - {0, IGNORE_INDEX}:
            return
    if IGNORE_INDEX in seen:
        files = min(count, len(mask_paths))
        values = " and ".join(str(value) for value in sorted(seen))
        warnings.warn(
            f"The first {files} label files hold only {values} (after any label_map), none "
            f"of classes 1..{num_classes - 1}; {IGNORE_INDEX} is the ignore value. If it "
            f"marks objects (binary masks stored as 0 and {IGNORE_INDEX}), every object pixel "
            f"is ignored and the model learns the background alone: map it to a class, "
            f"`label_map={{0: 0, {IGNORE_INDEX}: 1}}` (alignseg train and evaluate: "
            f"--label-map 0:0,{IGNORE_INDEX}:1). If it marks unlabelled pixels (borders), "
            "this is fine.", stacklevel=3)

