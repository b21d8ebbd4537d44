"""The paper's optimiser: SGD with momentum and a poly learning-rate schedule."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="alignseg_keras")
class WarmupPolynomialDecay(keras.optimizers.schedules.PolynomialDecay):
    """Keras' `PolynomialDecay` with an optional linear warm-up.

    After `warmup_steps`, `lr = initial * (1 - step / decay_steps) ** power` (the
    paper's poly schedule with power 0.9 and `end_learning_rate=0`); during the
    warm-up the rate rises linearly from `initial * warmup_start` to that value.
    `decay_steps=None` means "not known yet": `AlignSeg.fit` sets it from the
    number of epochs and steps of the first `fit` call.

    Args:
        initial_learning_rate: float, base learning rate (1e-2 for Cityscapes).
        decay_steps: int or None, total number of training steps.
        power: float, the poly exponent (0.9).
        end_learning_rate: float, the final rate (0).
        warmup_steps: int, length of the linear warm-up (0: none).
        warmup_start: float, warm-up starting fraction of the rate (0.1).
        name: schedule name.

    Example:
    ```python
    schedule = WarmupPolynomialDecay(1e-2, decay_steps=40000, warmup_steps=1000)
    ```
    """

    def __init__(
        self,
        initial_learning_rate=1e-2,
        decay_steps=None,
        power=0.9,
        end_learning_rate=0.0,
        warmup_steps=0,
        warmup_start=0.1,
        name="WarmupPolynomialDecay",
    ):
        super().__init__(
            initial_learning_rate,
            decay_steps or 1,
            end_learning_rate=end_learning_rate,
            power=power,
            name=name,
        )
        self.decay_steps = decay_steps
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)

    def __call__(self, step):
        if self.decay_steps is None:
            raise ValueError(
                "WarmupPolynomialDecay: `decay_steps` (the total number of training "
                "steps) is not set; pass it, or `total_steps` to AlignSeg.compile, or "
                "let AlignSeg.fit derive it from `epochs` and `steps_per_epoch`."
            )
        rate = super().__call__(step)
        if not self.warmup_steps:
            return rate
        progress = ops.minimum(ops.cast(step, "float32") / self.warmup_steps, 1.0)
        factor = self.warmup_start + (1.0 - self.warmup_start) * progress
        return rate * ops.cast(factor, rate.dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("cycle", None)
        config.update(
            {
                "decay_steps": self.decay_steps,
                "warmup_steps": self.warmup_steps,
                "warmup_start": self.warmup_start,
            }
        )
        return config


def paper_sgd(
    learning_rate=1e-2,
    total_steps=None,
    warmup_steps=0,
    momentum=0.9,
    weight_decay=1e-4,
):
    """SGD with momentum 0.9, weight decay 1e-4 and poly decay (power 0.9).

    `weight_decay` is given in PyTorch's coupled form (added to the gradient
    before momentum, as the paper and the authors' code use it). Keras' SGD
    decays the weights directly, outside the momentum; in steady state the
    coupled decay is amplified by `1 / (1 - momentum)`, so Keras receives
    `weight_decay / (1 - momentum)` to match.
    """
    schedule = WarmupPolynomialDecay(
        learning_rate, decay_steps=total_steps, warmup_steps=warmup_steps
    )
    return keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=momentum,
        weight_decay=weight_decay / (1.0 - momentum) if weight_decay else None,
    )
