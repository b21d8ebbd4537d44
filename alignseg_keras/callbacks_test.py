"""ResumableBackup, StopOnNaN, StopAtStep and atomic writes, on a two-weight Keras model."""

import errno
import os
import subprocess

import keras
import numpy as np
import pytest

from alignseg_keras.atomic import atomic_path
from alignseg_keras.atomic import is_disk_full
from alignseg_keras.callbacks import AtomicModelCheckpoint
from alignseg_keras.callbacks import BackupOfAnotherModelError
from alignseg_keras.callbacks import BackupOfAnotherOptimizerError
from alignseg_keras.callbacks import NonFiniteLossError
from alignseg_keras.callbacks import ResumableBackup
from alignseg_keras.callbacks import StopAtStep
from alignseg_keras.callbacks import StopOnNaN
from alignseg_keras.callbacks import check_finite_state

X = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)  # two batches of two: 2 steps an epoch
Y = np.zeros((4, 2), "float32")


def small_model(hidden=False, activation=None):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(4)] if hidden else []
    model = keras.Sequential([keras.Input((3,)), *layers, keras.layers.Dense(2, activation)])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    return model


def fit(model, backup, epochs, x=X, **kwargs):
    callbacks = [backup, StopOnNaN(), *kwargs.pop("callbacks", [])]
    return model.fit(x, Y, batch_size=2, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=callbacks, **kwargs)


def steps(model):
    return int(model.optimizer.iterations.numpy())


def names(folder):
    return sorted(os.listdir(folder))


def test_backups_are_kept_after_fit_and_resumed(tmp_path):
    folder = str(tmp_path / "backup")
    fit(small_model(), ResumableBackup(folder), epochs=3)
    assert names(folder) == ["epoch-0002.keras", "epoch-0003.keras"]
    model, backup = small_model(), ResumableBackup(folder)
    history = fit(model, backup, epochs=4)
    assert backup.restored.endswith("epoch-0003.keras")
    assert len(history.history["loss"]) == 1 and steps(model) == 8
    backup.discard()
    assert not os.path.exists(folder)


def test_discard_removes_the_oldest_backup_first(tmp_path, monkeypatch):
    # A kill between the two removals must leave the newest backup: resuming from an
    # older one trained again and replaced the finished model.keras.
    folder = str(tmp_path / "backup")
    fit(small_model(), ResumableBackup(folder), epochs=3)
    removed, remove = [], os.remove

    def killed_after_one(path):
        if removed:
            raise KeyboardInterrupt
        removed.append(os.path.basename(path))
        remove(path)

    monkeypatch.setattr(os, "remove", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        ResumableBackup(folder).discard()
    assert removed == ["epoch-0002.keras"] and names(folder) == ["epoch-0003.keras"]


def test_a_torn_backup_is_moved_aside_and_the_older_one_used(tmp_path, capsys):
    folder = tmp_path / "backup"
    fit(small_model(), ResumableBackup(str(folder)), epochs=3)
    newest = folder / "epoch-0003.keras"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    model, backup = small_model(), ResumableBackup(str(folder))
    fit(model, backup, epochs=3)
    assert backup.restored.endswith("epoch-0002.keras") and steps(model) == 6
    err = capsys.readouterr().err
    assert str(newest) in err and "epoch-0003.unusable-" in err
    assert any(name.startswith("epoch-0003.unusable-") for name in names(folder))


def test_other_processes_of_a_job_skip_a_torn_backup_without_moving_it(tmp_path, monkeypatch, capsys):
    from alignseg_keras import multiprocess

    folder = tmp_path / "backup"
    fit(small_model(), ResumableBackup(str(folder)), epochs=3)
    newest = folder / "epoch-0003.keras"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    monkeypatch.setattr(multiprocess, "is_chief", lambda: False)
    (backup,) = multiprocess.callbacks_for_this_process([ResumableBackup(str(folder))])
    backup.set_model(small_model())
    assert backup.restore().endswith("epoch-0002.keras")  # the backup process 0 picks
    assert names(folder) == ["epoch-0002.keras", "epoch-0003.keras"]  # process 0 moves it
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("changed", [dict(hidden=True), dict(activation="relu")],
                         ids=["other layers", "same weight shapes"])
def test_a_backup_of_a_model_with_other_arguments_is_refused_and_kept(tmp_path, changed):
    # A command given with other arguments in a run's folder: the backups moved aside
    # (before 2026-12-07) left the run with nothing to resume from. Weights of the same
    # shapes (other activation): load_weights alone would take them.
    folder = tmp_path / "backup"
    fit(small_model(), ResumableBackup(str(folder)), epochs=2)
    before = names(folder)
    model = small_model(**changed)
    initial = [weight.copy() for weight in model.get_weights()]
    backup = ResumableBackup(str(folder))
    backup.set_model(model)
    with pytest.raises(BackupOfAnotherModelError, match="written by a model with other arguments"
                       ) as refusal:
        backup.restore()
    assert str(folder / "epoch-0002.keras") in str(refusal.value)
    if "activation" in changed:
        assert "model.layers[1].activation: 'linear' in the backup, 'relu' now" in str(refusal.value)
    assert names(folder) == before
    for kept, weight in zip(initial, model.get_weights()):  # nothing half-loaded
        np.testing.assert_array_equal(kept, weight)
    with pytest.raises(BackupOfAnotherModelError):  # through fit too, before any step
        fit(model, ResumableBackup(str(folder)), epochs=3)
    assert steps(model) == 0 and names(folder) == before
    backup = ResumableBackup(str(folder))  # the run's own model still resumes
    backup.set_model(small_model())
    assert backup.restore().endswith("epoch-0002.keras")


def test_other_arguments_of_the_model_that_may_change_on_resume(tmp_path):
    folder = tmp_path / "backup"
    # In another precision, or with other layer names, the same model resumes.
    fit(small_model(), ResumableBackup(str(folder / "again")), epochs=1)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backup = ResumableBackup(str(folder / "again"))
        backup.set_model(small_model())
        assert backup.restore().endswith("epoch-0001.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_backup_whose_optimizer_state_does_not_load_is_refused_and_kept(tmp_path):
    # Keras skips an optimizer state of another size with a warning: a float32 run resumed
    # in float16 (loss scaling adds 4 variables), or the reverse, restarted at step 0 with
    # the schedule and momentum reset, and trained every step again.
    folder = tmp_path / "backup"
    fit(small_model(), ResumableBackup(str(folder)), epochs=2)

    def in_float16():
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            return small_model()  # compile wraps the SGD in a LossScaleOptimizer
        finally:
            keras.mixed_precision.set_global_policy("float32")

    adam = small_model()
    adam.compile(keras.optimizers.Adam(), "mse")
    for model, message in [(in_float16(), "state of the optimizer SGD, which does not load into "
                            "this model's LossScaleOptimizer: .* float16 wraps the optimizer in "
                            "loss scaling"),
                           (adam, "state of the optimizer SGD, which does not load into this "
                            "model's Adam")]:
        initial = [weight.copy() for weight in model.get_weights()]
        with pytest.raises(BackupOfAnotherOptimizerError, match=message):
            fit(model, ResumableBackup(str(folder)), epochs=3)
        assert steps(model) == 0 and names(folder) == ["epoch-0001.keras", "epoch-0002.keras"]
        for kept, weight in zip(initial, model.get_weights()):  # nothing half-loaded
            np.testing.assert_array_equal(kept, weight)
    # A float16 run resumes in float16, and is refused in float32.
    fit(in_float16(), ResumableBackup(str(tmp_path / "half")), epochs=1)
    model = in_float16()
    fit(model, ResumableBackup(str(tmp_path / "half")), epochs=2)
    assert steps(model) == 4
    with pytest.raises(BackupOfAnotherOptimizerError, match="state of the optimizer LossScaleOptimizer"):
        fit(small_model(), ResumableBackup(str(tmp_path / "half")), epochs=3)
    # A float16 run whose every step overflowed (skipped by loss scaling) saved step 0:
    # its own backup still resumes (the step alone cannot tell a skipped optimizer state).
    overflowing = tmp_path / "overflowing"
    model = in_float16()
    model.fit(np.ones((4, 3), "float32"), np.full((4, 2), 3e3, "float32"), batch_size=2,
              verbose=0, callbacks=[ResumableBackup(str(overflowing))])
    assert steps(model) == 0 and names(overflowing) == ["epoch-0001.keras"]
    backup = ResumableBackup(str(overflowing))
    backup.set_model(in_float16())
    assert backup.restore().endswith("epoch-0001.keras")


def test_a_resume_with_other_training_settings_says_which(tmp_path, capsys):
    folder = str(tmp_path / "backup")
    fit(small_model(), ResumableBackup(folder), epochs=1)
    backup = ResumableBackup(folder)
    backup.set_model(small_model())
    assert backup.restore().endswith("epoch-0001.keras")
    assert "other training settings" not in capsys.readouterr().err
    model = small_model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", jit_compile=False)
    backup = ResumableBackup(folder)
    backup.set_model(model)
    assert backup.restore().endswith("epoch-0001.keras")  # resumed, with a word
    err = capsys.readouterr().err
    assert "written with other training settings (optimizer.learning_rate: 0.0099" in err
    assert "0.05000000074505806 now)" in err and "jit_compile" not in err
    # A constant learning rate is an optimizer variable: the backup's is restored.
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.01, rtol=1e-6)


def test_a_metric_moved_to_the_weighted_metrics_is_no_other_setting(tmp_path):
    # compile()'s default MeanIoU moved from `metrics` to `weighted_metrics` (2026-12-08):
    # resuming an earlier backup said it was written with other training settings.
    from alignseg_keras.callbacks import changed_training_settings

    saved = small_model()
    saved.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse",
                  metrics=[keras.metrics.MeanAbsoluteError()])
    saved.save(tmp_path / "backup.keras")
    current = small_model()
    current.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse", metrics=[],
                    weighted_metrics=[keras.metrics.MeanAbsoluteError()])
    assert changed_training_settings(current, str(tmp_path / "backup.keras")) == ""
    current.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    assert "metrics" in changed_training_settings(current, str(tmp_path / "backup.keras"))


def test_a_functional_model_built_again_resumes_its_backups(tmp_path):
    # Auto-named layers get a per-process counter, also in the graph's references to them.
    from alignseg_keras.callbacks import changed_arguments

    def functional_model():
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)))
        model.compile(keras.optimizers.SGD(0.01), "mse")
        return model

    folder = str(tmp_path / "backup")
    fit(functional_model(), ResumableBackup(folder), epochs=1)
    again = functional_model()
    assert changed_arguments(again, os.path.join(folder, "epoch-0001.keras")) == ""
    backup = ResumableBackup(folder)
    backup.set_model(again)
    assert backup.restore().endswith("epoch-0001.keras")


def test_nan_stop_keeps_the_state_before_the_divergence(tmp_path, capsys):
    folder = str(tmp_path / "backup")
    fit(small_model(), ResumableBackup(folder), epochs=2)  # backups after steps 2 and 4
    bad = X.copy()
    bad[0, 0] = np.nan
    backup = ResumableBackup(folder)
    with pytest.raises(NonFiniteLossError) as stop:
        fit(small_model(), backup, epochs=4, x=bad)  # resumes at step 4; step 5 is NaN
    assert stop.value.step == 5
    assert backup.set_aside_if_diverged(stop.value.step) is not None
    assert "epoch-0002.diverged-" in capsys.readouterr().err
    model, backup = small_model(), ResumableBackup(folder)
    fit(model, backup, epochs=4)  # the re-run resumes from before the divergence
    assert backup.restored.endswith("epoch-0001.keras")
    assert steps(model) == 8 and all(np.isfinite(w).all() for w in model.get_weights())


def test_non_finite_weights_are_named_and_not_saved(tmp_path):
    model = small_model()
    model.layers[0].kernel.assign(np.full((3, 2), np.inf, "float32"))
    with pytest.raises(NonFiniteLossError, match="kernel became NaN or infinite"):
        check_finite_state(model)
    backup = ResumableBackup(str(tmp_path / "backup"))
    backup.set_model(model)
    with pytest.raises(NonFiniteLossError):
        backup.on_epoch_end(0)
    assert not (tmp_path / "backup").exists() or not names(tmp_path / "backup")


def test_stop_at_step_ends_the_last_epoch_early(tmp_path):
    model, backup = small_model(), ResumableBackup(str(tmp_path / "backup"))
    fit(model, backup, epochs=4, callbacks=[StopAtStep(7)])  # 2 steps an epoch; 7 is not 8
    assert steps(model) == 7
    assert backup.backups()[0][1].endswith("epoch-0004.keras")


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and names(tmp_path) == ["picture.png"]
    with atomic_path(path) as temporary:
        assert temporary.parent == path.parent and temporary.name.endswith("picture.png")
        temporary.write_bytes(b"new")
    assert path.read_bytes() == b"new" and names(tmp_path) == ["picture.png"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_keeps_the_last_backup_and_checkpoint(tiny_disk):
    model, backup = small_model(), ResumableBackup(str(tiny_disk / "backup"))
    checkpoint = AtomicModelCheckpoint(str(tiny_disk / "checkpoint.keras"))
    fit(model, backup, epochs=1, callbacks=[checkpoint])
    saved = {name: (tiny_disk / name).read_bytes() for name in ("checkpoint.keras",)}
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * (free - 4096))
    with pytest.raises(OSError) as error:
        fit(model, backup, epochs=3, callbacks=[checkpoint])
    assert is_disk_full(error.value)
    assert names(tiny_disk / "backup") == ["epoch-0001.keras"]
    assert (tiny_disk / "checkpoint.keras").read_bytes() == saved["checkpoint.keras"]
    assert not [name for name in names(tiny_disk) if name.startswith(".tmp-")]


def test_is_disk_full_looks_through_wrapped_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("h5py: write failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"))


def test_a_skipped_optimizer_state_is_found_whatever_keras_warning_says(tmp_path, monkeypatch):
    # The refusal read Keras' warning text alone: a reworded warning in a Keras release
    # would have resumed at step 0 with a fresh optimizer, silently.
    from alignseg_keras import callbacks
    from alignseg_keras.callbacks import _saved_optimizer_variable_count

    folder = tmp_path / "backup"
    fit(small_model(), ResumableBackup(str(folder)), epochs=1)
    saved = str(folder / "epoch-0001.keras")
    model = small_model()
    model.optimizer.build(model.trainable_variables)
    assert _saved_optimizer_variable_count(saved) == len(model.optimizer.variables) == 4
    assert _saved_optimizer_variable_count(str(tmp_path / "missing.keras")) is None
    monkeypatch.setattr(callbacks, "_SKIPPED_OPTIMIZER_WARNING", "a reworded warning")
    adam = small_model()
    adam.compile(keras.optimizers.Adam(), "mse")
    with pytest.raises(BackupOfAnotherOptimizerError, match="SGD, which does not load into this "
                                                            "model's Adam"):
        with pytest.warns(UserWarning, match="Skipping variable loading"):  # passed on now
            fit(adam, ResumableBackup(str(folder)), epochs=2)
    assert steps(adam) == 0
