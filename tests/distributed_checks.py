"""Multi-replica checks run in a subprocess (logical devices must be set before TF starts).

Usage: python tests/distributed_checks.py sync_batchnorm
Prints "OK" and exits 0 when the check passes.
"""

import sys

import numpy as np

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402

# In float64. Keras' synchronized BatchNormalization computes the variance as
# E[x^2] - E[x]^2 from all-reduced sums; one device computes it from squared
# deviations. The cancellation and the layers after it magnify the rounding
# difference: measured up to 4e-3 relative in float32 (1e-4 failed on an AVX-512
# CI machine), 1.1e-11 in float64, both about 1e5 times the unit roundoff
# (6e-8, 1.1e-16). Without synchronisation the statistics differ by 1e2 to 1e3.
keras.config.set_dtype_policy("float64")
# 1e-8 leaves a 1000x margin over the measured float64 difference. Keras' synchronised
# statistics run the same code in float32; that dtype is not compared here.
RTOL, ATOL = 1e-8, 1e-10

from alignseg_keras import AlignSeg  # noqa: E402


def build(sync_batchnorm=None):
    return AlignSeg(
        3,
        backbone="resnet18",
        decoder_channels=8,
        context_hidden_channels=16,
        dropout=0.0,
        sync_batchnorm=sync_batchnorm,
    )


def moving_statistics(model):
    return {
        w.path: w.numpy()
        for w in model.weights
        if "moving_mean" in w.path or "moving_variance" in w.path
    }


def one_step(model, images, masks, batch_size):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), aux_loss_weight=0.0)
    model.fit(images, masks, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return moving_statistics(model)


def check_sync_batchnorm():
    rng = np.random.default_rng(0)
    # Two very different halves: per-replica statistics differ from global ones.
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype("float32")
    images[2:] = images[2:] * 0.2 + 200
    masks = rng.integers(0, 3, (4, 32, 32)).astype("int32")

    single = build()
    assert not single.sync_batchnorm
    initial = single.get_weights()
    expected = one_step(single, images, masks, batch_size=4)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        synced = build()  # synchronised automatically inside the strategy
        unsynced = build(sync_batchnorm=False)
    assert synced.sync_batchnorm
    assert all(
        layer.synchronized
        for layer in synced._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    synced.set_weights(initial)
    unsynced.set_weights(initial)
    with strategy.scope():
        got = one_step(synced, images, masks, batch_size=4)
        local = one_step(unsynced, images, masks, batch_size=4)
    assert all(value.dtype == np.float64 for value in got.values())
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, rtol=RTOL, atol=ATOL, err_msg=path)
    # Control: without synchronisation the statistics are per-replica, hence differ.
    assert any(not np.allclose(local[p], v, rtol=1e-2) for p, v in expected.items())
    print("OK")


if __name__ == "__main__":
    {"sync_batchnorm": check_sync_batchnorm}[sys.argv[1]]()
