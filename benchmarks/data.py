"""Throughput of the tf.data training pipeline with the full augmentation."""

import time

# Cityscapes-sized synthetic scenes: random scale, photometric jitter, padding,
# random 512x512 crops and flips, as in training.
SCENE_SIZE = (1024, 2048)
CROP = (512, 512)
BATCH = 2


def pipeline_throughput(batches, scenes=8):
    """Images per second that `training_pipeline` delivers on its own."""
    from alignseg_keras.data import synthetic_scenes
    from alignseg_keras.data import training_pipeline

    dataset = training_pipeline(
        synthetic_scenes(scenes, SCENE_SIZE, seed=0),
        crop_size=CROP,
        batch_size=BATCH,
        scale_range=(0.5, 2.0),
        photometric=True,
        shuffle=scenes,
        seed=0,
    )
    iterator = iter(dataset)
    for _ in range(3):  # fills the prefetch buffer and the shuffle buffer
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    seconds = time.perf_counter() - start
    del images
    return [
        {
            "section": "data",
            "key": f"data training_pipeline {SCENE_SIZE[0]}x{SCENE_SIZE[1]} -> {CROP[0]}x{CROP[1]}",
            "scene_size": list(SCENE_SIZE),
            "crop": list(CROP),
            "batch": BATCH,
            "batches": batches,
            "seconds": seconds,
            "images_per_second": batches * BATCH / seconds,
        }
    ]
