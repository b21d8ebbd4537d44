"""Training callbacks: NaN stop, exact step counts, and crash-safe checkpoints and backups."""

import importlib.util
import math
import os
import re
import sys
import warnings

import keras

from alignseg_keras.atomic import atomic_path
from alignseg_keras.atomic import move_aside
from alignseg_keras.checks import first_non_finite_variable
from alignseg_keras.config_utils import keras_file_config
from alignseg_keras.optimizers import optimizer_step

BACKUP_NAME = re.compile(r"^epoch-(\d+)\.keras$")
# The TensorBoard logs of `training_callbacks`, in the output folder.
LOGS_FOLDER = "logs"


def list_backups(backup_dir):
    """`(epochs done, path)` of the `ResumableBackup` files in `backup_dir`, newest first."""
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        match = BACKUP_NAME.match(name)
        if match:
            found.append((int(match[1]), os.path.join(backup_dir, name)))
    return sorted(found, reverse=True)


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss or the weights become NaN or infinite.

    `step` is the optimizer step (1-based) whose loss was not finite, or after
    which the weights were not finite.
    """

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and says why.

    It raises `NonFiniteLossError` with a message naming the step and the usual
    causes. Raising (rather than `keras.callbacks.TerminateOnNaN`'s quiet stop)
    keeps the checkpoints and the backups of the last good epoch untouched:
    nothing is saved from the broken weights.

    Example:
    ```python
    try:
        model.fit(dataset, callbacks=[StopOnNaN()])
    except NonFiniteLossError as error:
        print(error)
    ```
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = optimizer_step(self.model)
        raise NonFiniteLossError(
            f"Training stopped: the loss became {float(loss)} at step {step}. Usual "
            "causes: a learning rate too high for the batch size, label values outside "
            "[0, num_classes) that are not the ignore label, or float16 overflow (try "
            "bfloat16 or float32). Nothing was saved from the diverged weights.",
            step=step,
        )


def check_finite_state(model):
    """Raises `NonFiniteLossError` naming the first model or optimizer variable with NaN or inf."""
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    path = first_non_finite_variable(variables)
    if path is not None:
        step = optimizer_step(model)
        raise NonFiniteLossError(
            f"Training stopped: {path} became NaN or infinite by step {step} "
            "(the loss was still finite: the training diverged). This state is not "
            "saved.",
            step=step,
        )


class StopAtStep(keras.callbacks.Callback):
    """Ends training once the optimizer has made `total_steps` steps.

    With checkpoints every `steps_per_epoch` steps, `fit(epochs=ceil(total /
    steps_per_epoch))` alone would run whole epochs past `total_steps`; this
    callback ends the last, shorter epoch (its end-of-epoch checkpoints run).
    """

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = int(total_steps)

    def on_train_batch_end(self, batch, logs=None):
        if optimizer_step(self.model) >= self.total_steps:
            self.model.stop_training = True


def save_model(model, path):
    """`model.save(path)`, atomically: `path` is the old file or the complete new one."""
    with atomic_path(path) as temporary:
        model.save(temporary)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model to `path` (a ".keras" file) after every epoch, atomically.

    Unlike `keras.callbacks.ModelCheckpoint`, a kill or a full disk during the
    save leaves the previous checkpoint intact.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        save_model(self.model, self.path)


class BackupOfAnotherModelError(ValueError):
    """A backup to resume from was written by a model with other arguments."""

    def __init__(self, path, changed):
        folder = os.path.dirname(path)
        super().__init__(
            f"The backup {path} was written by a model with other arguments ({changed}): "
            f"the backups in {folder} are another run's. Give the arguments of that run to "
            f"resume it, or another output folder to train this model (or remove {folder} "
            "to start over there)."
        )
        self.path = path


class BackupOfAnotherOptimizerError(ValueError):
    """A backup to resume from holds the state of an optimizer that does not load into
    the model's (Keras skips it, and training would restart at step 0)."""

    def __init__(self, path, saved_optimizer, optimizer):
        folder = os.path.dirname(path)
        scaling = "LossScaleOptimizer" in (saved_optimizer, optimizer)
        hint = (" float16 wraps the optimizer in loss scaling: a run in float16 resumes only "
                "in float16, one in float32 or bfloat16 only in one of these." if scaling else "")
        super().__init__(
            f"The backup {path} holds the state of {saved_optimizer}, which does not load into "
            f"this model's {optimizer}: resuming would restart the learning-rate schedule "
            f"and the momentum at step 0.{hint} Resume with that run's settings (for "
            f"`alignseg train`, its --precision), or give another output folder (or remove "
            f"{folder} to start over there)."
        )
        self.path = path


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups survive kills, full disks,
    divergence and a changed model.

    After every epoch it saves the model with its optimizer state to
    `backup_dir/epoch-NNNN.keras` (N epochs done) through a temporary file and
    an atomic rename, after checking that the weights are finite, and keeps the
    newest `keep` backups. (A `.keras` file is written by Python's zip writer,
    which fails cleanly on a full disk, where HDF5 writing straight to a
    `.weights.h5` file can crash the process.) At the start of `fit` it resumes
    from the newest backup that loads; one that cannot be read (a torn file,
    or weights that do not load) is renamed to
    `epoch-NNNN.unusable-<time>.keras`, with a message saying where, and the
    next older one is tried; with none left, training starts from the
    beginning. A backup written by a model with other arguments
    (`changed_arguments`: another backbone, number of classes, ...) is a run of
    another model in the same folder, most likely a command given with other
    arguments by mistake: `BackupOfAnotherModelError` (a `ValueError`) names
    the arguments, and nothing is moved, so the right model still resumes.
    Backups are kept at the end of `fit`: call `discard()` once the final
    model is safely saved.

    Example:
    ```python
    backup = ResumableBackup("runs/a/backup")
    model.fit(dataset, epochs=10, steps_per_epoch=100, callbacks=[backup, StopOnNaN()])
    save_model(model, "runs/a/model.keras")
    backup.discard()
    ```
    """

    def __init__(self, backup_dir, keep=2):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.keep = max(int(keep), 1)
        self.restored = None  # the backup training resumed from
        self.epochs_done = 0  # the epochs it had completed
        self._restore_tried = False
        self._newest = None  # (path, optimizer step) of the newest backup this process saw

    def backups(self):
        """`(epochs done, path)` of the backups in `backup_dir`, newest first."""
        return list_backups(self.backup_dir)

    def on_train_begin(self, logs=None):
        if not self._restore_tried:
            self.restore()

    def restore(self):
        """Loads the newest usable backup into the model; returns its path, or None.

        Backups that cannot be loaded are moved aside (see the class docstring).
        It runs once: `fit`'s `on_train_begin` does nothing after an explicit call.
        """
        self._restore_tried = True
        candidates = self.backups()
        if not candidates:
            return None
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        initial = _snapshot(self.model)
        for epoch, path in candidates:
            skipped_optimizer = False
            try:
                changed = changed_arguments(self.model, path)
                settings = changed_training_settings(self.model, path)  # before the optimizer loads
                if not changed:
                    skipped_optimizer = _load_weights_noting_a_skipped_optimizer(self.model, path)
            except Exception as error:  # a torn file (OSError), weights that do not fit, ...
                _assign(self.model, initial)
                self._move_aside(path, "unusable", "cannot be restored into this model "
                                 f"(a torn file, or a model changed since): {_first_line(error)}")
                continue
            if changed:
                raise BackupOfAnotherModelError(path, changed)
            if skipped_optimizer:  # another optimizer, or float16's loss scaling added or removed
                _assign(self.model, initial)
                raise BackupOfAnotherOptimizerError(path, _saved_optimizer_name(path),
                                                    type(self.model.optimizer).__name__)
            if settings:
                print(f"Resuming from {path}, written with other training settings ({settings}): "
                      "check that the change is meant (a constant learning rate is an optimizer "
                      "variable, restored from the backup).", file=sys.stderr)
            self.model._initial_epoch = epoch
            self.restored, self.epochs_done = path, epoch
            self._newest = (path, optimizer_step(self.model))
            return path
        return None

    def _save_model(self):
        check_finite_state(self.model)
        os.makedirs(self.backup_dir, exist_ok=True)
        path = os.path.join(self.backup_dir, f"epoch-{self._current_epoch:04d}.keras")
        save_model(self.model, path)
        self._newest = (path, optimizer_step(self.model))
        for _, old in self.backups()[self.keep:]:
            os.remove(old)

    def set_aside_if_diverged(self, step):
        """Moves the newest backup aside when the first step after it (`step`) was not finite.

        Resuming from that backup would diverge again at once, whatever the
        learning rate. Returns the new path, or None when nothing was moved.
        """
        if self._newest is None or step != self._newest[1] + 1:
            return None
        path = self._newest[0]
        if not os.path.exists(path):
            return None
        self._newest = None
        return self._move_aside(path, "diverged", f"led to a non-finite loss at step {step}")

    def discard(self):
        """Deletes the backups (once the final model is saved); moved-aside files stay.

        The oldest first: a kill in between leaves the newest, whose resume trains
        nothing more (an older one would train again and replace the final model)."""
        for _, path in reversed(self.backups()):
            os.remove(path)
        try:
            os.rmdir(self.backup_dir)
        except OSError:
            pass  # absent, or holds files moved aside

    def _move_aside(self, path, label, reason):
        target = move_aside(path, label)
        print(f"Backup {path} {reason}. Moved it to {target}; it is not used.", file=sys.stderr)
        return target


# Settings that may change between a backup and its resume: how the model computes or
# trains (precision, synchronised BatchNorm across replicas, frozen layers), not what it
# is; and layer names, which carry a counter of the process's earlier layers, with the
# functional graphs' references to them (the layers themselves are compared in order).
RESUMABLE_CHANGES = ("dtype", "trainable", "frozen_layers", "sync_batchnorm", "name",
                     "build_config", "compile_config", "inbound_nodes", "input_layers",
                     "output_layers")


def changed_arguments(model, path):
    """How the `.keras` file `path` was built differently from `model`, or "".

    Compares the saved model configuration with `model`'s, leaving out
    `RESUMABLE_CHANGES` and any setting only one of them has (a newer version
    of the library may add one). Weights of the same shapes can still belong
    to another model (e.g. another `alignment` sampler), which `load_weights`
    alone does not see.
    """
    saved = keras_file_config(path)
    current = keras.saving.serialize_keras_object(model)
    return _shown_differences(_config_differences(saved, current, "model"))


# How a compiled model runs, not what it trains: not reported on a resume.
_EXECUTION_SETTINGS = ("jit_compile", "run_eagerly", "steps_per_execution")


def changed_training_settings(model, path):
    """How the training settings `path` (a `.keras` backup) was compiled with differ from
    `model`'s (learning rate and schedule, optimizer, losses, metrics), or "". They may
    change on a resume; `ResumableBackup` says which did."""
    saved = keras_file_config(path).get("compile_config")
    current = model.get_compile_config() if getattr(model, "compiled", False) else None
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return ""
    saved, current = _metrics_as_one_list(saved), _metrics_as_one_list(current)
    keys = (saved.keys() & current.keys()) - set(_EXECUTION_SETTINGS)
    return _shown_differences(
        difference for key in sorted(keys)
        for difference in _config_differences(saved[key], current[key], key))


def _metrics_as_one_list(compile_config):
    """`compile_config` with its `metrics` and `weighted_metrics` as one list under
    `metrics`: files saved before 2026-12-08 hold the default `MeanIoU` in `metrics`, later
    ones in `weighted_metrics` (it follows sample weights), the same metric either way."""
    metrics = [*(compile_config.get("metrics") or []),
               *(compile_config.get("weighted_metrics") or [])]
    merged = {key: value for key, value in compile_config.items() if key != "weighted_metrics"}
    return {**merged, "metrics": metrics}


# The start of the warning with which Keras' `load_own_variables` skips an optimizer state
# whose number of variables differs from the optimizer's (keras/src/optimizers/base_optimizer.py).
_SKIPPED_OPTIMIZER_WARNING = "Skipping variable loading for optimizer"


def _load_weights_noting_a_skipped_optimizer(model, path):
    """`model.load_weights(path)`; whether Keras skipped the optimizer's state. Keras
    skips it when the file holds another number of optimizer variables than the
    optimizer has, with a warning (caught here; other warnings pass on): both are
    looked at, so that a rewording of the warning cannot make a skipped state pass.
    The optimizer's step cannot tell: a float16 run whose every step overflowed has
    saved step 0 too."""
    saved = _saved_optimizer_variable_count(path)
    optimizer = model.optimizer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = (saved is not None and optimizer is not None
               and saved != len(optimizer.variables))
    for warning in caught:
        if str(warning.message).startswith(_SKIPPED_OPTIMIZER_WARNING):
            skipped = True
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    return skipped


def _saved_optimizer_variable_count(path):
    """How many optimizer variables the `.keras` file `path` holds (Keras' layout:
    `optimizer/vars/<i>` in `model.weights.h5`), or None where it is not that layout."""
    import zipfile

    import h5py

    try:  # read in place: h5py seeks in the archive's member (the weights are not loaded)
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file:
            with h5py.File(file, "r") as weights:
                variables = weights.get("optimizer/vars")
                return None if variables is None else len(variables.keys())
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def _saved_optimizer_name(path):
    """"the optimizer NAME" the `.keras` file `path` trained with: the one given to
    `compile`, or `LossScaleOptimizer`, in which `compile` wraps it for a model of
    float16 layers; "another optimizer" where the file does not say."""
    import json

    config = keras_file_config(path)
    optimizer = (config.get("compile_config") or {}).get("optimizer")
    name = optimizer.get("class_name") if isinstance(optimizer, dict) else None
    if '"mixed_float16"' in json.dumps(config):
        name = "LossScaleOptimizer"
    return f"the optimizer {name}" if name else "another optimizer"


def _shown_differences(differences):
    differences = list(differences)
    shown = "; ".join(f"{key}: {old!r} in the backup, {new!r} now" for key, old, new in differences[:3])
    return shown + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")


def _config_differences(saved, current, key):
    """`(key, saved, current)` of the settings that differ, depth first."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in sorted(saved.keys() & current.keys()):
            if name not in RESUMABLE_CHANGES:
                yield from _config_differences(saved[name], current[name], f"{key}.{name}")
    elif isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)) and len(saved) == len(current):
        for index, (old, new) in enumerate(zip(saved, current)):
            yield from _config_differences(old, new, f"{key}[{index}]")
    elif saved != current:
        yield key.replace(".config.", "."), saved, current


def _snapshot(model):
    variables = list(model.variables) + list(model.optimizer.variables if model.optimizer else [])
    return [(variable, keras.ops.convert_to_numpy(variable)) for variable in variables]


def _assign(model, snapshot):
    for variable, value in snapshot:
        variable.assign(value)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def tensorboard_available():
    """Whether TensorBoard logs can be written (the tensorboard and tensorflow packages)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorflow"))


def training_callbacks(output_dir, total_steps=None, pictures=None):
    """The callbacks of a long training run, all writing under `output_dir`.

    `StopOnNaN`; `ResumableBackup` in `backup/` (rerunning the same `fit`
    resumes from the last completed epoch after a crash, a kill or a full disk;
    torn backups are moved aside, those of a model with other arguments
    refused); `history.csv`;
    `AtomicModelCheckpoint` to `checkpoint.keras` after every epoch; with
    `total_steps`, `StopAtStep`; and TensorBoard logs in `logs/` (skipped with a
    message when TensorBoard is not installed). Use epochs as checkpoint intervals
    (`steps_per_epoch` = steps between checkpoints). With `pictures`, a dict of
    `tensorboard_pictures.SegmentationPictures` arguments (`images`, `masks`,
    `class_names`, ...), also pictures of those images in `logs/pictures/`.
    """
    callbacks = [
        StopOnNaN(),
        ResumableBackup(os.path.join(output_dir, "backup")),
        # After the backup: a row for every epoch a re-run will not redo.
        keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv"), append=True),
        AtomicModelCheckpoint(os.path.join(output_dir, "checkpoint.keras")),
    ]
    if total_steps is not None:
        callbacks.append(StopAtStep(total_steps))
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, LOGS_FOLDER)))
        if pictures:
            from alignseg_keras.tensorboard_pictures import SegmentationPictures

            callbacks.append(
                SegmentationPictures(os.path.join(output_dir, LOGS_FOLDER, "pictures"), **pictures))
    else:
        print("TensorBoard is not installed: no logs are written to "
              f"{os.path.join(output_dir, LOGS_FOLDER)} (pip install tensorboard).", file=sys.stderr)
    return callbacks
