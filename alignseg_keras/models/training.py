"""Helpers behind `AlignSeg.compile` and `AlignSeg.fit`: the paper's defaults."""

import math

from alignseg_keras.optimizers import WarmupPolynomialDecay


def count_training_steps(x, batch_size, epochs, initial_epoch, steps_per_epoch, validation_split):
    """Number of optimizer steps a `fit` call will run, or None when unknown."""
    if steps_per_epoch is None:
        if hasattr(x, "cardinality"):  # tf.data.Dataset
            cardinality = int(x.cardinality())
            steps_per_epoch = cardinality if cardinality > 0 else None
        elif hasattr(x, "__len__") and hasattr(x, "shape"):  # arrays
            samples = int(len(x) * (1.0 - (validation_split or 0.0)))
            steps_per_epoch = math.ceil(samples / (batch_size or 32))
        elif hasattr(x, "__len__"):  # keras.utils.PyDataset and sequences
            steps_per_epoch = len(x)
    if steps_per_epoch is None:
        return None
    return steps_per_epoch * (epochs - initial_epoch)


def resolve_poly_schedule(optimizer, total_steps):
    """Sets the total steps of a `WarmupPolynomialDecay` that does not know them yet."""
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, WarmupPolynomialDecay) or schedule.decay_steps is not None:
        return
    if total_steps is None:
        raise ValueError(
            "The poly learning-rate schedule needs the total number of training steps, "
            "and this fit call does not tell it (an infinite dataset?). Pass "
            "`steps_per_epoch` to fit, or `total_steps` to compile."
        )
    schedule.decay_steps = int(total_steps)
