"""Multi-replica checks run in a subprocess (logical devices must be set before TF starts).

Usage: python tests/distributed_checks.py sync_batchnorm|replica_loss
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
from alignseg_keras import losses  # noqa: E402


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


def trained_step(model, images, masks, **compile_arguments):
    """One SGD step on the whole batch: the weight update, the step's loss, then `evaluate`'s."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3), **compile_arguments)
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(images, masks, batch_size=len(images), epochs=1, shuffle=False, verbose=0)
    update = np.concatenate([
        (v.numpy() - w).ravel() for v, w in zip(model.trainable_variables, before)
    ])
    evaluated = model.evaluate(images, masks, batch_size=len(images), verbose=0, return_dict=True)
    return update, history.history["loss"][0], evaluated["loss"]


# The losses compute in float32 whatever the policy (`losses._prepare`): a mean over the
# 4096 pixels of the batch (2048 per replica), within n u = 4096 * 2**-24 = 2.4e-4 of the
# exact one in any summation order (measured 0.7-1.2e-7). The bug this finds gives 1.0.
LOSS_RTOL = 4096 * 2.0**-24


def check_replica_loss():
    """Two replicas take the step one device takes on the same global batch.

    Keras divides a loss by the replica count, since the replicas' gradients are
    summed; our losses reduce themselves to a scalar, which Keras does not divide
    (before they did it themselves, two replicas took twice the step and reported
    twice the loss). Every pixel is labelled and the halves are of equal size, so
    the mean of the replicas' pixel means is the whole batch's mean; a plain Keras
    model with Keras' own loss is the control of the comparison itself.
    """
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype("float32")
    masks = rng.integers(0, 3, (4, 32, 32)).astype("int32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cases = {
        "compile() defaults (cross-entropy + deep supervision)": dict(),
        "CombinedLoss with a Keras term": dict(
            loss=losses.CombinedLoss([
                losses.SegmentationCrossEntropy(),
                (keras.losses.SparseCategoricalCrossentropy(from_logits=True), 0.5),
            ]),
            aux_loss=losses.OhemCrossEntropy(min_kept=10**6),
        ),
        "CombinedLoss with an unreduced Keras term": dict(
            loss=losses.CombinedLoss([
                losses.SegmentationCrossEntropy(),
                (keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None), 0.5),
            ]),
            aux_loss_weight=0.0,
        ),
    }
    for name, compile_arguments in cases.items():
        single = build()
        initial = single.get_weights()
        expected = trained_step(single, images, masks, **compile_arguments)
        with strategy.scope():
            replicated = build()
            replicated.set_weights(initial)
            got = trained_step(replicated, images, masks, **compile_arguments)
        change = np.linalg.norm(got[0] - expected[0]) / np.linalg.norm(expected[0])
        # The per-pixel gradients are those of one device scaled by powers of two (two
        # replicas, equal halves, every pixel labelled), so only the float64 weights' and
        # synchronised statistics' rounding (see RTOL above) separates the updates.
        assert change < RTOL, f"{name}: the two replicas' update differs by {change:.3g} of one device's"
        for what, value, reference in zip(("fit", "evaluate"), got[1:], expected[1:]):
            np.testing.assert_allclose(value, reference, rtol=LOSS_RTOL, err_msg=f"{name}: {what} loss")
    # A wrong sample_weight is seen per replica: the message says whose shape it gives.
    try:
        replicated.fit(images, masks, sample_weight=np.ones((4, 32)), batch_size=4, verbose=0)
    except ValueError as error:
        assert "received shape (2, 32) (one of 2 replicas' share of the batch)" in str(error), error
    else:
        raise AssertionError("a (batch, height) sample_weight was accepted")
    print("OK")


if __name__ == "__main__":
    {"sync_batchnorm": check_sync_batchnorm, "replica_loss": check_replica_loss}[sys.argv[1]]()
