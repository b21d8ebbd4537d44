import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.data import augment

FILL = (123.675, 116.28, 103.53)
# Class c is painted with PALETTE[c]; none equals FILL.
PALETTE = np.array([[10 + 30 * c, 220 - 25 * c, (60 + 70 * c) % 250] for c in range(6)], np.float32)


def block_scenes(count=4, size=(48, 64), block=8, seed=0):
    """Masks made of `block`-sized squares of classes 0..5; images = PALETTE[mask]."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, len(PALETTE), (count, size[0] // block, size[1] // block))
    masks = np.repeat(np.repeat(grid, block, axis=1), block, axis=2).astype(np.uint8)
    images = PALETTE[masks].astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, masks))


def take(dataset, batches):
    pairs = [(x.numpy(), y.numpy()) for x, y in dataset.take(batches)]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def interior(masks, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood lies in the crop and holds one label (not 255)."""
    padded = np.pad(masks, ((0, 0), (radius, radius), (radius, radius)), constant_values=-1)
    height, width = masks.shape[1:]
    same = np.ones(masks.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[:, dy : dy + height, dx : dx + width] == masks
    return same & (masks != 255)


@pytest.fixture(autouse=True)
def no_global_seed():
    """Each test starts without TensorFlow's global seed, as in a fresh process: the
    regression hashes below were recorded so, and tests that ran before in the same
    pytest worker (`keras.utils.set_random_seed`) would otherwise change every op seed."""
    from tensorflow.python.eager import context

    previous = context.global_seed()
    tf.random.set_seed(None)
    yield
    tf.random.set_seed(previous)


def pipeline(dataset, **kwargs):
    args = dict(crop_size=(40, 56), batch_size=4, scale_range=(0.5, 2.0), seed=0, shuffle=4)
    return augment.training_pipeline(dataset, **{**args, **kwargs})


def test_output_shapes_and_dtypes():
    images, masks = take(pipeline(block_scenes()), 1)
    assert images.shape == (4, 40, 56, 3) and images.dtype == np.float32
    assert masks.shape == (4, 40, 56) and masks.dtype == np.int32


def test_masks_stay_aligned_with_images():
    images, masks = take(pipeline(block_scenes(), photometric=False), 6)
    inside = interior(masks)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(images[inside], PALETTE[masks[inside]], atol=0.5)


def test_padding_is_mean_and_ignore():
    # Scales below 1 make 48x64 images smaller than the 40x56 crop.
    images, masks = take(pipeline(block_scenes(), scale_range=(0.3, 0.6)), 3)
    padding = masks == 255
    assert padding.any()
    np.testing.assert_allclose(images[padding], np.broadcast_to(FILL, images[padding].shape), atol=1e-4)
    # The padding is at the bottom and right only (then possibly flipped).
    assert padding[:, -1].all()


def test_nearest_neighbour_masks_hold_only_input_values():
    _, masks = take(pipeline(block_scenes(), scale_range=(0.37, 1.93)), 6)
    assert set(np.unique(masks)) <= set(range(len(PALETTE))) | {255}


def test_scale_step_draws_from_the_grid():
    dataset = block_scenes(count=1, size=(40, 40), block=8)
    kwargs = dict(crop_size=(80, 80), batch_size=1, flip=False, scale_range=(1.0, 2.0), scale_step=0.5)
    _, masks = take(pipeline(dataset, **kwargs), 12)
    heights = (masks != 255).any(axis=2).sum(axis=1)
    assert set(heights) <= {40, 60, 80} and len(set(heights)) > 1


def test_scaled_sizes_are_rounded_as_opencv_rounds_them():
    # cv2.resize(image, None, fx=f, fy=f), the authors' augmentation: round(size * f),
    # half to even (cvRound). 16x21 at 0.7: 11.2 x 14.7 -> 11 x 15 (rounded up: 12 x 15);
    # 1024x2048 at 0.8: 819.2 x 1638.4 -> 819 x 1638; 5x7 at 0.5: 2.5 x 3.5 -> 2 x 4.
    for (height, width), factor, expected in (((16, 21), 0.7, (11, 15)),
                                              ((1024, 2048), 0.8, (819, 1638)),
                                              ((5, 7), 0.5, (2, 4)), ((3, 3), 0.1, (1, 1))):
        image = tf.zeros((height, width, 3), tf.float32)
        mask = tf.zeros((height, width), tf.int32)
        for step in (None, 0.1):
            scaled, scaled_mask = augment.random_scale(image, mask, (factor, factor),
                                                       tf.constant([1, 2]), scale_step=step)
            assert tuple(scaled.shape[:2]) == expected == tuple(scaled_mask.shape), (factor, step)


def test_same_seed_reproduces_and_other_seed_differs():
    kwargs = dict(photometric=True)
    first = take(pipeline(block_scenes(), seed=7, **kwargs), 3)
    again = take(pipeline(block_scenes(), seed=7, **kwargs), 3)
    other = take(pipeline(block_scenes(), seed=8, **kwargs), 3)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def single_scene_pipeline(dataset, **kwargs):
    """A pipeline over one 32x48 scene whose only randomness is the flip."""
    args = dict(crop_size=(32, 48), batch_size=8, scale_range=(1.0, 1.0), shuffle=0)
    return pipeline(dataset, **{**args, **kwargs})


def flips(dataset, batches, **kwargs):
    """Which rows of `batches` batches of one 32x48 scene are mirrored (each row
    is the scene itself or its mirror image, mask and image alike)."""
    original_image, original_mask = next(iter(dataset))
    original_image = original_image.numpy().astype(np.float32)
    images, masks = take(single_scene_pipeline(dataset, **kwargs), batches)
    flipped = np.array([np.array_equal(mask, original_mask[:, ::-1]) for mask in masks])
    kept = np.array([np.array_equal(mask, original_mask) for mask in masks])
    assert (flipped | kept).all()
    np.testing.assert_array_equal(images[flipped], np.broadcast_to(original_image[:, ::-1], images[flipped].shape))
    np.testing.assert_array_equal(images[kept], np.broadcast_to(original_image, images[kept].shape))
    return flipped


def test_flip_mirrors_image_and_mask_together_half_the_time():
    flipped = flips(block_scenes(count=1, size=(32, 48)), 25)
    # 200 independent coin flips: 0.5 +- 0.035 (one standard deviation).
    assert 0.38 < flipped.mean() < 0.62, flipped.mean()
    # Per element, not per batch: batches mix flipped and kept rows.
    per_batch = flipped.reshape(25, 8).mean(axis=1)
    assert ((per_batch > 0) & (per_batch < 1)).sum() > 20


def test_flips_are_the_same_in_every_iteration_and_differ_with_the_seed():
    dataset = block_scenes(count=1, size=(32, 48))
    first = flips(dataset, 4)
    assert not np.array_equal(flips(dataset, 4, seed=1), first)
    # One pipeline iterated twice, concurrently: the same flips.
    batches = single_scene_pipeline(dataset)
    one, two = iter(batches), iter(batches)
    masks = [(next(one)[1].numpy(), next(two)[1].numpy()) for _ in range(4)]
    for left, right in masks:
        np.testing.assert_array_equal(left, right)
    np.testing.assert_array_equal(np.concatenate([left for left, _ in masks])[:, 0, 0] ==
                                  np.asarray(next(iter(dataset))[1])[0, -1], first)


def test_two_iterators_yield_the_same_batches():
    """Keras' JAX `fit` takes a batch from a first iterator and trains from a second;
    the processes of a data-parallel job each build the pipeline: all must agree."""
    dataset = pipeline(block_scenes(count=6), photometric=True, scale_range=(0.7, 1.5))
    first, second = iter(dataset), iter(dataset)
    next(first)  # one iterator ahead of the other, both prefetching
    expected = [next(first) for _ in range(8)]
    next(second)
    for images, masks in expected:
        other_images, other_masks = next(second)
        np.testing.assert_array_equal(other_images.numpy(), images.numpy())
        np.testing.assert_array_equal(other_masks.numpy(), masks.numpy())
    # Another pipeline built with the same seed yields them too.
    again = take(pipeline(block_scenes(count=6), photometric=True, scale_range=(0.7, 1.5)), 9)
    np.testing.assert_array_equal(again[1][4:], np.concatenate([m.numpy() for _, m in expected]))
    np.testing.assert_array_equal(again[0][4:], np.concatenate([i.numpy() for i, _ in expected]))


def identity_scenes(count):
    """32x48 scenes whose mask is 2i on the left half and 2i + 1 on the right (scene i)."""
    masks = np.zeros((count, 32, 48), np.uint8)
    masks[:] = 2 * np.arange(count, dtype=np.uint8)[:, None, None]
    masks[:, :, 24:] += 1
    return tf.data.Dataset.from_tensor_slices((PALETTE[masks % len(PALETTE)].astype(np.uint8), masks))


def scene_and_flip(masks):
    """The scene of each row of identity_scenes' masks, and whether it is mirrored."""
    left, right = masks[:, 0, 0], masks[:, 0, -1]
    return np.minimum(left, right) // 2, left > right


def test_epochs_are_reshuffled_and_augmented_anew():
    # Batch = epoch: 6 scenes, batch 6, no scaling, full-size crops.
    kwargs = dict(crop_size=(32, 48), batch_size=6, scale_range=(1.0, 1.0), shuffle=6)
    _, masks = take(pipeline(identity_scenes(6), **kwargs), 8)
    scenes, flipped = (part.reshape(8, 6) for part in scene_and_flip(masks))
    assert all(sorted(order) == list(range(6)) for order in scenes)  # each scene once per epoch
    assert len({tuple(order) for order in scenes}) > 4
    # Each scene's coin is drawn again every epoch.
    by_scene = [tuple(epoch_flips[np.argsort(order)]) for epoch_flips, order in zip(flipped, scenes)]
    assert len(set(by_scene)) > 4


def test_without_repeat_every_iteration_is_a_new_epoch():
    kwargs = dict(crop_size=(32, 48), batch_size=6, scale_range=(1.0, 1.0), shuffle=6, repeat=False)
    dataset = pipeline(identity_scenes(6), **kwargs)
    orders = [tuple(masks.numpy()[:, 0, 0]) for _ in range(6) for _, masks in dataset]
    assert len(orders) == 6 and len(set(orders)) > 3  # reshuffled (and flipped) anew
    # The n-th iteration of pipelines built alike is the same.
    again = pipeline(identity_scenes(6), **kwargs)
    assert [tuple(masks.numpy()[:, 0, 0]) for _ in range(6) for _, masks in again] == orders


def test_no_flip_keeps_orientation():
    dataset = block_scenes(count=1, size=(32, 48))
    _, original_mask = next(iter(dataset))
    kwargs = dict(crop_size=(32, 48), batch_size=4, scale_range=(1.0, 1.0), flip=False, shuffle=0)
    _, masks = take(pipeline(dataset, **kwargs), 2)
    assert all(np.array_equal(mask, original_mask) for mask in masks)


def test_photometric_changes_images_only():
    plain = take(pipeline(block_scenes(), seed=3), 2)
    jittered = take(pipeline(block_scenes(), seed=3, photometric=True), 2)
    np.testing.assert_array_equal(plain[1], jittered[1])
    assert np.abs(plain[0] - jittered[0]).mean() > 1.0
    assert jittered[0].min() >= 0 and jittered[0].max() <= 255
    # Padding stays the mean.
    padding = jittered[1] == 255
    np.testing.assert_allclose(jittered[0][padding], np.broadcast_to(FILL, jittered[0][padding].shape), atol=1e-4)


def test_photometric_dict_selects_jitters():
    plain = take(pipeline(block_scenes(), seed=3), 1)[0]
    brighter = take(pipeline(block_scenes(), seed=3, photometric={"brightness": 60.0}), 1)[0]
    valid = plain != np.float32(FILL[0])
    delta = (brighter - plain)[:, :, :, 0][valid[..., 0]]
    assert np.abs(delta).max() > 1.0


def test_masks_with_a_channel_axis_are_accepted():
    images, masks = next(iter(block_scenes(count=2)))
    dataset = tf.data.Dataset.from_tensors((images, masks[..., None]))
    batch = next(iter(augment.evaluation_pipeline(dataset)))
    assert batch[1].shape == (1, 48, 64)


def test_evaluation_pipeline_batches_without_changes():
    dataset = block_scenes(count=3)
    images, masks = take(augment.evaluation_pipeline(dataset, batch_size=2), 2)
    expected = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert images.dtype == np.float32 and masks.dtype == np.int32
    np.testing.assert_array_equal(images, np.stack([e[0] for e in expected]).astype(np.float32))
    np.testing.assert_array_equal(masks, np.stack([e[1] for e in expected]))


def test_finite_pipeline_without_repeat():
    batches = list(pipeline(block_scenes(count=6), repeat=False, batch_size=4))
    assert len(batches) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(crop_size=(0, 10)), "crop_size"),
        (dict(crop_size=64), "crop_size"),
        (dict(scale_range=(2.0, 0.5)), "scale_range"),
        (dict(scale_range=(0.0, 1.0)), "scale_range"),
        (dict(scale_step=-0.1), "scale_step"),
        (dict(photometric={"blur": 1.0}), "photometric"),
        (dict(fill_mean=(1.0, 2.0)), "fill_mean"),
        (dict(fill_mean=None), r"`fill_mean` needs 3 numbers .*received None"),  # a TypeError
        (dict(fill_mean=("a", 1, 2)), "fill_mean"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.7), r"`batch_size` must be an int >= 1; received 2.7"),
        (dict(batch_size=True), "batch_size"),
        (dict(crop_size=(16.9, 16.9)), "crop_size"),
        (dict(ignore_index=300), "ignore_index"),
        (dict(shuffle=True), r"`shuffle` must be an int >= 0; received True"),
        (dict(shuffle=-1), "shuffle"),
        (dict(batch_size=float("inf")), r"`batch_size` must be an int >= 1; received inf"),
        (dict(crop_size=(float("nan"), 4)), "crop_size"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipeline(block_scenes(count=1), **kwargs)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_images_of_an_unknown_channel_count_are_made_rgb(channels):
    # As `tf.io.decode_png` gives them: the channels the file stores, unknown statically.
    gray = np.arange(20 * 24, dtype="uint8").reshape(20, 24, 1)
    stored = np.concatenate([gray] + [np.full_like(gray, 200 + k) for k in range(channels - 1)], -1)
    rgb = np.repeat(gray, 3, -1) if channels < 3 else stored[..., :3]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([(stored, np.zeros((20, 24), "uint8"))]),
        output_signature=(tf.TensorSpec((None, None, None), tf.uint8), tf.TensorSpec((None, None), tf.uint8)),
    )
    images, _ = augment.evaluation_pipeline(dataset).get_single_element()
    np.testing.assert_array_equal(images[0], rgb)
    images, masks = pipeline(dataset, crop_size=(20, 24), scale_range=(1, 1), flip=False,
                             batch_size=1).take(1).get_single_element()
    np.testing.assert_array_equal(images[0], rgb)


def test_bad_datasets():
    images, masks = block_scenes(count=2).batch(2).get_single_element()
    with pytest.raises(ValueError, match="unbatched"):
        augment.training_pipeline(tf.data.Dataset.from_tensors((images, masks)))
    with pytest.raises(ValueError, match="pairs"):
        augment.evaluation_pipeline(tf.data.Dataset.from_tensors(images))
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        augment.evaluation_pipeline((images, masks))
    with pytest.raises(ValueError, match="masks"):
        augment.evaluation_pipeline(tf.data.Dataset.from_tensors((images[0], images[0])))


def test_reproducible_under_any_global_seed():
    """`alignseg train` sets TensorFlow's global seed (`keras.utils.set_random_seed`), 0 by default."""
    from tensorflow.python.eager import context

    previous = context.global_seed()
    try:
        batches = []
        for _ in range(2):
            tf.random.set_seed(0)
            dataset = pipeline(block_scenes(count=6), photometric=True)
            iterator = iter(dataset)
            next(iter(dataset))  # another iterator first, as Keras' JAX fit does
            batches.append([next(iterator)[1].numpy() for _ in range(3)])
        for first, second in zip(*batches):
            np.testing.assert_array_equal(first, second)
        for kwargs in (dict(repeat=False), dict(shuffle=0)):
            tf.random.set_seed(0)
            assert take(pipeline(block_scenes(count=6), **kwargs), 1)[0].shape == (4, 40, 56, 3)
    finally:
        tf.random.set_seed(previous)


# Class-balanced crops (mmseg's RandomCrop(cat_max_ratio)).


def dominated_scene():
    """64x64: class 0, an 18x18 square of class 1 and an ignored strip on the left. Of
    the 33x33 windows of 32x32, about 18% pass mmseg's test at 0.75 (computed in the test)."""
    mask = np.zeros((64, 64), np.uint8)
    mask[24:42, 40:58] = 1
    mask[:, :6] = 255
    return mask


def balanced(mask, ratio, ignore=255):
    """mmseg's test, in NumPy: np.unique counts without the ignore index."""
    labels, counts = np.unique(mask, return_counts=True)
    counts = counts[labels != ignore]
    return len(counts) > 1 and np.max(counts) / np.sum(counts) < ratio


def window_pass_rate(mask, size, ratio):
    height, width = mask.shape
    return np.mean([balanced(mask[y : y + size[0], x : x + size[1]], ratio)
                    for y in range(height - size[0] + 1) for x in range(width - size[1] + 1)])


def test_class_balanced_crop_follows_the_numpy_rule_on_its_windows():
    mask = dominated_scene()
    rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    # The image encodes each pixel's row, column and label.
    image = np.stack([rows, cols, mask], axis=-1).astype(np.float32)
    tries, ratio, size = 3, 0.75, (32, 32)
    outcomes = []
    for index in range(40):
        seed = tf.constant([index, 11], tf.int64)
        crop_image, crop_mask = augment.class_balanced_crop(
            tf.constant(image), tf.constant(mask, tf.int32), size, seed, ratio, tries)
        crop_image, crop_mask = crop_image.numpy(), crop_mask.numpy()
        # Image and mask come from the same window.
        np.testing.assert_array_equal(crop_image[..., 2], crop_mask)
        top, left = int(crop_image[0, 0, 0]), int(crop_image[0, 0, 1])
        np.testing.assert_array_equal(crop_mask, mask[top : top + 32, left : left + 32])
        # The candidate windows: TensorFlow's own random crop with each try's seed.
        windows = []
        for try_seed in augment.crop_seeds(seed, tries):
            corner = tf.image.stateless_random_crop(tf.constant(image), (32, 32, 3), try_seed)[0, 0]
            windows.append((int(corner[0]), int(corner[1])))
        passing = [t for t, (y, x) in enumerate(windows[:tries])
                   if balanced(mask[y : y + 32, x : x + 32], ratio)]
        expected = passing[0] if passing else tries  # else the last re-draw, untested
        assert (top, left) == windows[expected], (index, windows, passing)
        outcomes.append(expected)
        if expected == 0:  # window 0 is random_crop's with the same seed
            plain = augment.random_crop(tf.constant(image), tf.constant(mask, tf.int32), size, seed)
            np.testing.assert_array_equal(plain[0].numpy(), crop_image)
    # The seeds cover every case: the first window, a re-draw, none passing.
    assert {0, tries} <= set(outcomes) and set(outcomes) - {0, tries}


def dominated_pipeline(**kwargs):
    mask = dominated_scene()
    dataset = tf.data.Dataset.from_tensors((PALETTE[mask % len(PALETTE)].astype(np.uint8), mask))
    args = dict(crop_size=(32, 32), batch_size=8, scale_range=(1.0, 1.0), flip=False, shuffle=0)
    return pipeline(dataset, **{**args, **kwargs})


@pytest.mark.parametrize("tries", [2, 10])
def test_cat_max_ratio_draws_fewer_dominated_crops(tries):
    """Each window passes with probability p (enumerated in NumPy): without the option a
    crop is dominated with probability 1 - p, with it (1 - p)^(tries + 1)."""
    batches, ratio = 25, 0.75
    rate = window_pass_rate(dominated_scene(), (32, 32), ratio)
    assert 0.1 < rate < 0.3
    for option, expected in ((None, 1 - rate), (ratio, (1 - rate) ** (tries + 1))):
        _, masks = take(dominated_pipeline(cat_max_ratio=option, cat_max_tries=tries), batches)
        dominated = np.mean([not balanced(mask, ratio) for mask in masks])
        sigma = np.sqrt(expected * (1 - expected) / len(masks))
        assert abs(dominated - expected) < 4 * sigma + 0.01, (option, dominated, expected)


def test_class_balanced_crops_are_reproducible_and_aligned():
    # At 0.3 some crops of these six-class scenes are re-drawn (checked below).
    kwargs = dict(cat_max_ratio=0.3, cat_max_tries=4, photometric=True, scale_range=(0.7, 1.5))
    dataset = pipeline(block_scenes(count=6), **kwargs)
    first, second = iter(dataset), iter(dataset)
    next(first)  # one iterator ahead of the other
    expected = [next(first) for _ in range(4)]
    next(second)
    for images, masks in expected:
        other_images, other_masks = next(second)
        np.testing.assert_array_equal(other_images.numpy(), images.numpy())
        np.testing.assert_array_equal(other_masks.numpy(), masks.numpy())
    again = take(pipeline(block_scenes(count=6), **kwargs), 5)
    np.testing.assert_array_equal(again[1][4:], np.concatenate([m.numpy() for _, m in expected]))
    np.testing.assert_array_equal(again[0][4:], np.concatenate([i.numpy() for i, _ in expected]))
    plain = take(pipeline(block_scenes(count=6), **{**kwargs, "cat_max_ratio": None}), 5)
    redrawn = [not np.array_equal(a, b) for a, b in zip(plain[1], again[1])]
    assert 0 < np.mean(redrawn) < 0.5
    other = take(pipeline(block_scenes(count=6), **{**kwargs, "seed": 1}), 5)
    assert not np.array_equal(other[1], again[1])
    # Image and mask cropped together (no jitter, to compare colours).
    images, masks = take(pipeline(block_scenes(), cat_max_ratio=0.3), 6)
    inside = interior(masks)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(images[inside], PALETTE[masks[inside]], atol=0.5)


# SHA-256 prefixes of the pipeline's output before `cat_max_ratio` existed (TensorFlow 2.21
# on x86-64 CPUs): the default path must not change. The masks of scaled crops (nearest
# neighbour) and images and masks of unscaled ones (exact copies) do not depend on the
# floating-point code paths of the machine; a new TensorFlow may change its random ops.
# The scaled masks' changed on 2026-12-07 with the scaled size's rounding (OpenCV's).
REGRESSION_HASHES = {
    "scaled masks": "0db8ca573496724a",
    "unscaled": "b383f891858c1da9",
}


def digest(*arrays):
    import hashlib

    hasher = hashlib.sha256()
    for array in arrays:
        hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()[:16]


@pytest.mark.parametrize("option", [{}, dict(cat_max_ratio=None), dict(cat_max_ratio=1.0, cat_max_tries=3)])
def test_without_cat_max_ratio_the_output_is_unchanged(option):
    _, masks = take(pipeline(block_scenes(count=6), scale_range=(0.5, 2.0), **option), 4)
    assert digest(masks) == REGRESSION_HASHES["scaled masks"]
    images, masks = take(pipeline(block_scenes(count=6), crop_size=(24, 32), scale_range=(1.0, 1.0),
                                  **option), 4)
    assert digest(images, masks) == REGRESSION_HASHES["unscaled"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cat_max_ratio=0.0), "cat_max_ratio"),
        (dict(cat_max_ratio=1.5), "cat_max_ratio"),
        (dict(cat_max_ratio="0.75"), "cat_max_ratio"),
        (dict(cat_max_ratio=True), "cat_max_ratio"),
        (dict(cat_max_ratio=0.75, cat_max_tries=0), "cat_max_tries"),
        (dict(cat_max_ratio=0.75, cat_max_tries=2.5), "cat_max_tries"),
        (dict(cat_max_tries=-1), "cat_max_tries"),
    ],
)
def test_bad_cat_max_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipeline(block_scenes(count=1), **kwargs)


def test_the_class_balanced_crop_and_its_test_are_in_the_data_package():
    from alignseg_keras import data

    assert data.class_balanced_crop is augment.class_balanced_crop
    mask = tf.constant([[0, 0], [1, 255]], tf.int32)  # 2 of 3 labelled pixels are class 0
    assert bool(data.crop_is_balanced(mask, 0.75)) and not bool(data.crop_is_balanced(mask, 0.6))


def test_evaluation_batches_of_images_of_several_sizes_name_the_batch_size():
    def scenes(*widths):
        images = [tf.zeros((6, width, 3), tf.uint8) for width in widths]
        masks = [tf.zeros((6, width), tf.uint8) for width in widths]
        return tf.data.Dataset.from_generator(
            lambda: zip(images, masks), output_signature=(
                tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((None, None), tf.uint8)))

    # One size per batch, the sizes of the batches differing: fine.
    shapes = [images.shape for images, _ in augment.evaluation_pipeline(scenes(8, 8, 7), 2)]
    assert shapes == [(2, 6, 8, 3), (1, 6, 7, 3)]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"evaluation_pipeline\(batch_size=2\) batches images of one size"):
        list(augment.evaluation_pipeline(scenes(8, 7), 2))
    assert len(list(augment.evaluation_pipeline(scenes(8, 7), 1))) == 2


def test_importing_the_library_leaves_tensorflows_runtime_unstarted():
    # A tensor made at import started it: devices and collective ops (MultiWorkerMirrored)
    # could then no longer be configured ("Virtual devices cannot be modified after being
    # initialized").
    import subprocess
    import sys

    script = ("import alignseg_keras, alignseg_keras.data, alignseg_keras.cli\n"
              "from tensorflow.python.eager import context\n"
              "print(context.context()._context_handle is None)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip() == "True", result.stderr[-3000:]
