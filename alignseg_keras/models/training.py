"""Helpers behind `AlignSeg.compile` and `AlignSeg.fit`: the paper's defaults."""

import math
import warnings

import keras

from alignseg_keras.optimizers import WarmupPolynomialDecay


def count_training_steps(x, batch_size, epochs, initial_epoch, steps_per_epoch, validation_split):
    """Number of optimizer steps a `fit` call will run, or None when unknown."""
    if steps_per_epoch is None:
        if hasattr(x, "cardinality"):  # tf.data.Dataset
            cardinality = int(x.cardinality())
            steps_per_epoch = cardinality if cardinality >= 0 else None
        elif hasattr(x, "__len__") and hasattr(x, "shape"):  # arrays
            samples = int(len(x) * (1.0 - (validation_split or 0.0)))
            steps_per_epoch = math.ceil(samples / (batch_size or 32))
        elif hasattr(x, "__len__"):  # keras.utils.PyDataset and sequences
            steps_per_epoch = len(x)
    if steps_per_epoch is None:
        return None
    return steps_per_epoch * (epochs - initial_epoch)


def require_training_data(steps, epochs, initial_epoch):
    """Raises `ValueError` when a `fit` call that should train has no batches."""
    if steps == 0 and epochs > initial_epoch:
        raise ValueError(
            "This fit call has no training batches: the data is empty (or "
            "`validation_split` leaves no training samples), and a step on no data "
            "would apply a NaN update. Pass at least one image and its mask."
        )


def resolve_poly_schedule(optimizer, total_steps):
    """Fits a `WarmupPolynomialDecay` to a `fit` call of `total_steps` steps.

    A schedule whose length comes from `fit` is extended to the steps done so
    far plus `total_steps` (see `WarmupPolynomialDecay`); a fixed one is left
    as it is, with a warning when it has already ended.

    Returns:
        True when the length changed (a traced training step must be traced again).
    """
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, WarmupPolynomialDecay):
        return False
    done = int(keras.ops.convert_to_numpy(optimizer.iterations))
    if not schedule.length_from_fit:
        _warn_if_ended(schedule, done)
        return False
    if total_steps is None:
        raise ValueError(
            "The poly learning-rate schedule needs the number of training steps, "
            "and this fit call does not tell it (an infinite dataset or a generator?). "
            "Pass `steps_per_epoch` to fit, or `total_steps` to compile."
        )
    return schedule.extend(done, total_steps)


def _warn_if_ended(schedule, done):
    if schedule.decay_steps is not None and done >= schedule.decay_steps:
        warnings.warn(
            f"The poly learning-rate schedule ended at step {schedule.decay_steps} "
            f"(compile's `total_steps`) and the optimizer is at step {done}: this fit "
            f"trains at the end rate {schedule.end_learning_rate}. Compile with a larger "
            "`total_steps`, or without it so that every fit extends the schedule.",
            stacklevel=3,
        )
