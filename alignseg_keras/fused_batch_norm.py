"""TensorFlow's fused batch normalisation, for `layers.BatchNormalization` (TF only).

Keras' BatchNormalization computes in `keras.ops`: on TensorFlow that is a cast to
float32, `tf.nn.moments` and `tf.nn.batch_normalization`, about a dozen elementwise
ops and reductions forward and their gradients backward, each a pass over the
activation. `FusedBatchNormV3` (oneDNN's kernel on CPU, cuDNN's on GPU) does it in
one pass forward and one backward, takes bfloat16/float16 activations with
float32 statistics, and lets TensorFlow's grappler fuse the ReLU that follows.
"""

import tensorflow as tf

FUSED_DTYPES = ("float16", "bfloat16", "float32")


def fused_batch_norm(x, gamma, beta, mean, variance, epsilon, use_batch_statistics):
    """Normalises the channels of NHWC `x` in one kernel.

    With `use_batch_statistics`, `x` is normalised by its own per-channel mean and
    (biased) variance, as Keras' BatchNormalization does in training, and the
    gradient flows through those statistics; otherwise by `mean` and `variance`.

    Args:
        x: NHWC tensor in one of `FUSED_DTYPES`.
        gamma, beta: per-channel float32 scale and offset.
        mean, variance: per-channel float32 statistics used when
            `use_batch_statistics` is False (ignored otherwise).
        epsilon: added to the variance.
        use_batch_statistics: bool.

    Returns:
        `(y, batch_mean, batch_variance)`: `y` in `x`'s dtype; with batch
        statistics, the batch's mean and biased variance (float32), else None, None.
    """
    if use_batch_statistics:
        empty = tf.constant([], tf.float32)
        y, batch_mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=epsilon, data_format="NHWC", is_training=True,
        )
        # The kernel returns the variance with Bessel's correction n / (n - 1)
        # (0 for n = 1); Keras' moving variance averages the biased one.
        count = tf.cast(tf.size(x, out_type=tf.int64) // tf.cast(tf.shape(x)[-1], tf.int64), tf.float32)
        biased_variance = unbiased_variance * ((count - 1.0) / tf.maximum(count, 1.0))
        return y, batch_mean, biased_variance
    y, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=mean, variance=variance,
        epsilon=epsilon, data_format="NHWC", is_training=False,
    )
    return y, None, None
