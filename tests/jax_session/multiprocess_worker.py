"""One process of tests/test_multiprocess_jax.py (JAX backend, CPU).

    python multiprocess_worker.py worker OUTPUT_DIR      # with KERAS_DISTRIBUTION_* set
    python multiprocess_worker.py reference OUTPUT_DIR   # one process, one device

`worker`: joins the job (`alignseg_keras.multiprocess.initialize`), sets
`DataParallel` over every device of every process, and

- records the batches Keras' `distribute_dataset` gives this process from the
  global `training_pipeline` (the call `fit`'s tf.data adapter makes), from a
  first and a second iterator of the same pipeline (Keras' JAX `fit` takes
  one batch from a first iterator, `_symbolic_build`, and trains from a second),
- trains a tiny AlignSeg with `fit` for `STEPS` steps on that pipeline itself,
  as `alignseg train` does,
- trains a lone BatchNormalization (momentum 0, so its moving statistics are the
  last batch's) on one global batch whose two process shards have very
  different means,

and writes `process-<id>.npz` (weights by path, the recorded batches, the
BatchNorm probe). `reference`: the same model trained by one process on one
device on the first `STEPS` global batches of the pipeline, recorded as arrays
and replayed by a plain `tf.data` dataset (`fit_dataset`); writes
`reference.npz` (weights, the global batches). Both print a JSON line last.

The job's weights can only equal the reference's if `fit` trained on exactly
the recorded batches in every process: `training_pipeline` draws every random
number statelessly from its seed, the epoch and the element's place, so every
iterator of it (`fit`'s second one included) and every process yields the same
global batches, flips included. (Before, its flip was a Keras `RandomFlip`
whose seed state all iterators shared and their prefetching threads raced, and
the job trained on other flips than the reference.)
"""

import json
import os
import sys
import time

import keras
import numpy as np

from alignseg_keras import data
from alignseg_keras import multiprocess
from alignseg_keras.testing import tiny_alignseg

import cases  # tests/jax_session/cases.py

STEPS = 3
GLOBAL_BATCH = 4
CROP = (48, 48)
SEED = 7
NUM_CLASSES = len(data.SYNTHETIC_CLASSES)
PROBE_CHANNELS = 3
# Small enough that 3 steps stay where the update is a smooth function of the
# weights. At 2e-2 (and already at 2e-3) this tiny, randomly initialised net is
# chaotic: float32 rounding (one device against four, or one ulp of noise on
# the starting weights of a single device) grows to 15-35 % of the update after
# 3 steps, so no float32 tolerance can tell a bug from rounding. At 2e-4 the
# two runs differ by at most a few hundred ulps of each variable (about 1 % of
# the update of the median variable; how much depends on the batches).
LEARNING_RATE = 2e-4


def pipeline():
    """The global pipeline; a new dataset object every call, so every iteration starts afresh."""
    scenes = data.synthetic_scenes(12, (56, 72), seed=3)
    return data.training_pipeline(
        scenes, crop_size=CROP, batch_size=GLOBAL_BATCH, scale_range=(0.75, 1.5),
        seed=multiprocess.agreed_seed(SEED),
    )


def take(dataset, count):
    batches = [next(iterator) for iterator in [iter(dataset)] for _ in range(count)]
    return (np.stack([np.asarray(images) for images, _ in batches]),
            np.stack([np.asarray(masks) for _, masks in batches]))


def global_batches():
    """`STEPS` global batches of the pipeline, as arrays (the same in every process)."""
    return take(pipeline(), STEPS)


def fit_dataset(images, masks):
    """The global batches as a `tf.data` dataset that yields them in every iteration
    (the reference trains on exactly the batches it recorded)."""
    import tensorflow as tf

    rows = (images.reshape((-1,) + images.shape[2:]), masks.reshape((-1,) + masks.shape[2:]))
    return tf.data.Dataset.from_tensor_slices(rows).batch(GLOBAL_BATCH, drop_remainder=True)


def train_alignseg(dataset):
    # No dropout: its masks would differ between one device and four.
    model = tiny_alignseg(NUM_CLASSES, seed=0, dropout=0.0)
    # The same starting weights everywhere, drawn by NumPy: Keras' initialisers
    # draw other numbers for a variable laid out on a mesh than on one device.
    cases.randomize_weights(model)
    initial = weights_by_path(model, "initial")
    model.compile(learning_rate=LEARNING_RATE, total_steps=100, weight_decay=1e-4)
    history = model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    assert int(model.optimizer.iterations) == STEPS
    return model, history.history["loss"], initial


def weights_by_path(model, prefix="weight"):
    return {f"{prefix}/{v.path}": keras.ops.convert_to_numpy(v) for v in model.variables}


def probe_batch():
    """A global batch of 4 rows: process 0's shard near 0, process 1's near 10."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, PROBE_CHANNELS)).astype("float32")
    x[GLOBAL_BATCH // 2:] += 10.0
    return x


def batchnorm_probe():
    """One `fit` step of a lone BatchNormalization on the global probe batch."""
    import tensorflow as tf

    x = probe_batch()
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros_like(x))).batch(GLOBAL_BATCH)
    model = keras.Sequential([
        keras.Input((PROBE_CHANNELS,)),
        keras.layers.BatchNormalization(momentum=0.0, center=False, scale=False),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(dataset, epochs=1, verbose=0)
    layer = model.layers[-1]
    return (keras.ops.convert_to_numpy(layer.moving_mean),
            keras.ops.convert_to_numpy(layer.moving_variance))


def log(what, start):
    print(f"{what}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)


def worker(output_dir):
    import jax

    start = time.monotonic()
    # One seed everywhere (Keras, NumPy and TensorFlow's global seed, which the
    # tf.data pipeline's random ops depend on besides their own seeds); without
    # it `initialize` would agree on a random one, unknown to the reference.
    keras.utils.set_random_seed(SEED)
    job = multiprocess.initialize()
    distribution = multiprocess.data_parallel()
    per_process = multiprocess.check_global_batch_size(GLOBAL_BATCH)
    train = pipeline()
    # Two iterators of the one pipeline `fit` is given, as `fit` makes them.
    shard_images, shard_masks = take(distribution.distribute_dataset(train), STEPS)
    assert shard_images.shape[1] == per_process, shard_images.shape
    fit_images, fit_masks = take(distribution.distribute_dataset(train), STEPS)
    keras.utils.set_random_seed(SEED)  # as in `reference`
    images, masks = global_batches()

    log("data", start)
    model, losses, initial = train_alignseg(train)
    log("fit", start)
    multiprocess.assert_same_on_all_processes(multiprocess.weights_fingerprint(model),
                                              "the trained weights")
    log("check", start)
    moving_mean, moving_variance = batchnorm_probe()
    np.savez(
        os.path.join(output_dir, f"process-{job.process_id}.npz"),
        shard_images=shard_images,
        shard_masks=shard_masks,
        global_images=images,
        global_masks=masks,
        fit_images=fit_images,
        fit_masks=fit_masks,
        probe_moving_mean=moving_mean,
        probe_moving_variance=moving_variance,
        **weights_by_path(model),
        **initial,
    )
    print(json.dumps({
        "process_id": job.process_id,
        "num_processes": job.num_processes,
        "is_chief": multiprocess.is_chief(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "mesh": [str(device) for device in distribution.device_mesh.devices.flat],
        "per_process_batch": per_process,
        "losses": [float(loss) for loss in losses],
        "seconds": time.monotonic() - start,
    }))


def reference(output_dir):
    import jax

    start = time.monotonic()
    keras.utils.set_random_seed(SEED)
    images, masks = global_batches()
    model, losses, initial = train_alignseg(fit_dataset(images, masks))
    np.savez(os.path.join(output_dir, "reference.npz"), global_images=images,
             global_masks=masks, probe=probe_batch(), **weights_by_path(model), **initial)
    print(json.dumps({"devices": jax.device_count(), "losses": [float(loss) for loss in losses],
                      "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    {"worker": worker, "reference": reference}[sys.argv[1]](sys.argv[2])
