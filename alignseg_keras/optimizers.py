"""The paper's optimiser: SGD with momentum and a poly learning-rate schedule."""

import warnings

import keras
from keras import ops

from alignseg_keras.execution_order import computed_after

# The optimizer steps of the authors' Cityscapes run: their train.py's default (their
# README's released models trained 120k); `alignseg train --steps` defaults to it.
CITYSCAPES_STEPS = 40000


def optimizer_step(model):
    """The optimizer steps `model` has made (restored ones included), as an int;
    0 for a model without an optimizer."""
    optimizer = getattr(model, "optimizer", None)
    return 0 if optimizer is None else int(ops.convert_to_numpy(optimizer.iterations))


@keras.saving.register_keras_serializable(package="alignseg_keras")
class WarmupPolynomialDecay(keras.optimizers.schedules.PolynomialDecay):
    """Keras' `PolynomialDecay` with an optional linear warm-up.

    After `warmup_steps`, `lr = initial * (1 - step / decay_steps) ** power` (the
    paper's poly schedule with power 0.9 and `end_learning_rate=0`); during the
    warm-up the rate rises linearly from `initial * warmup_start` to that value.
    `step` is the optimizer's iteration count, over all `fit` calls.

    The length:
    - `decay_steps=N`: a fixed plan of N steps; later steps train at
      `end_learning_rate` (`PolyScheduleLength` warns when a `fit` starts past it).
    - `decay_steps=None`: the length comes from `fit`. In every `fit` with a
      `PolyScheduleLength` callback (`AlignSeg.fit` adds one), it is set to
      the steps done so far plus the steps of that `fit`, so the
      first `fit` runs a full poly decay and a second `fit` ("train some
      more") continues the decay from where the iteration count is, ending at
      the end of that `fit`, instead of training at rate 0. Until a `fit` has
      set a length (`compile()` then `train_on_batch`, or a custom loop), the
      rate is constant: `initial_learning_rate`, after the warm-up.

    Args:
        initial_learning_rate: float, base learning rate (1e-2 for Cityscapes).
        decay_steps: int or None, total number of training steps (see above).
        power: float, the poly exponent (0.9).
        end_learning_rate: float, the final rate (0).
        warmup_steps: int, length of the linear warm-up (0: none).
        warmup_start: float, warm-up starting fraction of the rate (0.1).
        name: schedule name.
        length_from_fit: bool or None, whether `PolyScheduleLength` sets the length;
            None means `decay_steps is None`. Saved with the schedule, so a
            reloaded model keeps extending it.

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
        length_from_fit=None,
    ):
        super().__init__(
            initial_learning_rate,
            decay_steps or 1,
            end_learning_rate=end_learning_rate,
            power=power,
            name=name,
        )
        self.decay_steps = None if decay_steps is None else int(decay_steps)
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(
                f"WarmupPolynomialDecay: `decay_steps` must be a positive int or None; "
                f"received {decay_steps!r}."
            )
        self.length_from_fit = decay_steps is None if length_from_fit is None else bool(length_from_fit)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)

    def extend(self, steps_done, new_steps):
        """Sets the length to `steps_done + new_steps` (what `PolyScheduleLength` calls); True if it changed."""
        length = int(steps_done) + int(new_steps)
        changed = length != self.decay_steps
        self.decay_steps = length
        return changed

    def __call__(self, step):
        if self.decay_steps is None:
            rate = ops.convert_to_tensor(self.initial_learning_rate, "float32")
        else:
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
                "length_from_fit": self.length_from_fit,
            }
        )
        return config


class PolyScheduleLength(keras.callbacks.Callback):
    """Fits the length of a `WarmupPolynomialDecay` to the `fit` it runs in.

    At the first epoch of a `fit` (after `BackupAndRestore` has chosen the
    epoch training resumes from), a schedule compiled without `decay_steps`
    is extended to the optimizer's step count plus the steps that this `fit`
    has left: Keras' own count of steps per epoch (`self.params["steps"]`,
    which follows `steps_per_epoch`, `validation_split` and the data) times
    the epochs from there to `epochs`. A changed length means a new training
    function (the length is traced into it). A fixed schedule is left as it
    is, with a warning when it has already ended. Other learning rates are
    left alone. `AlignSeg.fit` adds this callback itself.

    Raises:
        ValueError: the schedule needs a length and Keras cannot count the
            steps (an infinite dataset or a generator without `steps_per_epoch`).

    Example:
    ```python
    model.compile(optimizer=paper_sgd(1e-2), loss=loss)  # any keras.Model
    model.fit(dataset, epochs=10, callbacks=[PolyScheduleLength()])
    ```
    """

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if not getattr(self, "_first_epoch", True):
            return
        self._first_epoch = False
        optimizer = getattr(self.model, "optimizer", None)
        schedule = getattr(optimizer, "_learning_rate", None)
        if not isinstance(schedule, WarmupPolynomialDecay):
            return
        done = optimizer_step(self.model)
        if not schedule.length_from_fit:
            _warn_if_ended(schedule, done)
            return
        steps_per_epoch = self.params.get("steps")
        if steps_per_epoch is None:
            raise ValueError(
                "The poly learning-rate schedule needs the number of training steps, "
                "and this fit call does not tell it (an infinite dataset or a generator?). "
                "Pass `steps_per_epoch` to fit, or `total_steps` to compile."
            )
        epochs_left = self.params["epochs"] - epoch
        if schedule.extend(done, steps_per_epoch * epochs_left):
            self.model.make_train_function(force=True)


def _warn_if_ended(schedule, done):
    if schedule.decay_steps is not None and done >= schedule.decay_steps:
        warnings.warn(
            f"The poly learning-rate schedule ended at step {schedule.decay_steps} "
            f"(compile's `total_steps`) and the optimizer is at step {done}: this fit "
            f"trains at the end rate {schedule.end_learning_rate}. Compile with a larger "
            "`total_steps`, or without it so that every fit extends the schedule.",
            stacklevel=2,
        )


@keras.saving.register_keras_serializable(package="alignseg_keras")
class PyTorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum as `torch.optim.SGD` computes it: the authors' optimiser.

    Per variable `p` with gradient `g`, at learning rate `lr`:
    `d = g + weight_decay * p`; `buffer = momentum * buffer + d` (the buffer
    starts at 0, so the first step stores `d`); `p = p - lr * buffer`. The
    weight decay is coupled (added to the gradient, inside the momentum) and
    the learning rate multiplies the whole buffer, as in PyTorch. Keras' `SGD`
    differs in both: its `weight_decay` decays the weights outside the
    momentum, and its momentum buffer holds steps already scaled by the
    learning rate of their time, so under a decaying rate it moves the weights
    by a different amount.

    Each variable's update reads the variable and its buffer only once the
    gradient exists (`alignseg_keras.execution_order`): on TensorFlow's graph
    executor, the gradient-free halves of every update (`weight_decay * p`,
    `momentum * buffer`) would otherwise all be computed during the backward
    pass and held until the gradients arrive, a copy of the weights each.

    Args:
        learning_rate: float or a `keras.optimizers.schedules` schedule.
        momentum: float, the momentum factor (0.9); 0 keeps no buffer.
        weight_decay: float, PyTorch's (coupled) weight decay; 0 for none.
            `exclude_from_weight_decay` excludes variables from it, as in Keras.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`name`,
            `clipnorm`, ...). Keras' own decoupled `weight_decay` is not taken.

    Example:
    ```python
    optimizer = PyTorchSGD(WarmupPolynomialDecay(1e-2, decay_steps=40000), weight_decay=1e-4)
    model.compile(optimizer=optimizer)
    ```
    """

    def __init__(self, learning_rate=1e-2, momentum=0.9, weight_decay=0.0, name="PyTorchSGD", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"PyTorchSGD: `momentum` must be a float in [0, 1); received momentum={momentum!r}.")
        if not weight_decay >= 0:
            raise ValueError(f"PyTorchSGD: `weight_decay` must be >= 0; received weight_decay={weight_decay!r}.")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum:
            self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        step = ops.cast(gradient, dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            (value,) = computed_after(step, variable)
            step = step + ops.cast(self.coupled_weight_decay, dtype) * value
        if self.momentum:
            buffer = self.momentum_buffers[self._get_variable_index(variable)]
            (previous,) = computed_after(step, buffer)
            step = ops.cast(self.momentum, dtype) * previous + step
            self.assign(buffer, step)
        self.assign_sub(variable, ops.cast(learning_rate, dtype) * step)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "weight_decay": self.coupled_weight_decay})
        return config


def paper_sgd(
    learning_rate=1e-2,
    total_steps=None,
    warmup_steps=0,
    momentum=0.9,
    weight_decay=1e-4,
):
    """The paper's optimiser: `PyTorchSGD` with momentum 0.9, weight decay
    1e-4 (coupled, as in the authors' code) and poly decay (power 0.9) from
    `learning_rate`, after `warmup_steps` of linear warm-up."""
    schedule = WarmupPolynomialDecay(
        learning_rate, decay_steps=total_steps, warmup_steps=warmup_steps
    )
    return PyTorchSGD(schedule, momentum=momentum, weight_decay=weight_decay)
