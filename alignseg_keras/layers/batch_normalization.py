"""Keras' BatchNormalization, computed by one fused kernel on TensorFlow."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="alignseg_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs as one fused kernel on TensorFlow.

    The same layer, arguments, weights and results as Keras' (to float32
    rounding): in training, `y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta`
    with the batch's mean and biased variance, and
    `moving = momentum * moving + (1 - momentum) * batch`; otherwise the moving
    statistics. On TensorFlow, for 4-D channels-last inputs that are not
    synchronised across replicas and use no mask or renormalisation, the layer
    calls `FusedBatchNormV3` (`alignseg_keras.fused_batch_norm`): one pass
    forward and one backward instead of a dozen elementwise ops and reductions,
    with bfloat16 activations kept in bfloat16. A training step of AlignSeg-R101
    at 512x512 under `mixed_bfloat16` takes about a third less time on a CPU
    (docs/benchmarks.md). Everywhere else, and on the other backends (whose
    compilers fuse these ops themselves), it is Keras' layer unchanged.

    `alignseg_keras.batch_norm_folding` folds the layer into the convolution
    before it for inference; a folded layer (`folded = True`, not saved in the
    config) is the bias addition `x + beta`, which its weights (`gamma` 1,
    moving mean 0, moving variance `1 - epsilon`) also describe unfolded.

    Args:
        **kwargs: those of `keras.layers.BatchNormalization`.

    Example:
    ```python
    x = keras.random.normal((2, 16, 16, 8))
    norm = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
    y = norm(x, training=True)  # normalised per channel, moving statistics updated
    ```
    """

    def _uses_fused_kernel(self, inputs, mask):
        if keras.backend.backend() != "tensorflow":
            return False
        from alignseg_keras.fused_batch_norm import FUSED_DTYPES

        return (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and mask is None
            and not self.synchronized
            and not self.renorm
            and keras.backend.standardize_dtype(inputs.dtype) in FUSED_DTYPES
        )

    folded = False

    def call(self, inputs, training=None, mask=None):
        if self.folded:
            # On TensorFlow a 1-D addend becomes BiasAdd, fused into the convolution.
            return ops.cast(ops.add(inputs, ops.cast(self.beta, inputs.dtype)), self.compute_dtype)
        if not self._uses_fused_kernel(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        from alignseg_keras.fused_batch_norm import fused_batch_norm

        channels = inputs.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,))
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,))
        use_batch_statistics = bool(training and self.trainable)
        outputs, batch_mean, batch_variance = fused_batch_norm(
            inputs,
            gamma,
            beta,
            ops.cast(self.moving_mean, "float32"),
            ops.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon,
            use_batch_statistics=use_batch_statistics,
        )
        if use_batch_statistics:
            self._update_moving_statistics(batch_mean, batch_variance)
        return ops.cast(outputs, self.compute_dtype)

    def _update_moving_statistics(self, batch_mean, batch_variance):
        """Keras' update: `moving = momentum * moving + (1 - momentum) * batch`."""
        for moving, batch in (
            (self.moving_mean, batch_mean),
            (self.moving_variance, batch_variance),
        ):
            average = ops.cast(moving, "float32") * self.momentum + batch * (
                1.0 - self.momentum
            )
            moving.assign(ops.cast(average, moving.dtype))
