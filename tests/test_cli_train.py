"""`alignseg train` and `alignseg evaluate` end to end: resume after a kill, a full disk or a
kill during the final save, exact step counts, NaN stop, tables."""

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import pytest

from alignseg_keras.cli import main
from alignseg_keras.testing import read_only_folder

TINY = [
    "--dataset", "synthetic", "--synthetic-images", "8", "--synthetic-size", "64", "64",
    "--backbone", "resnet18", "--decoder-channels", "8", "--context-hidden-channels", "16",
    "--crop-size", "64", "64", "--batch-size", "2",
]


def alignseg(*args):
    return [sys.executable, "-m", "alignseg_keras.cli", *args]


def epochs_in_history(output):
    path = os.path.join(output, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("epoch")]


def test_train_resumes_after_a_kill(tmp_path):
    output = str(tmp_path / "run")
    # A combined loss, so that its config survives the backups, the resume and the final save.
    command = alignseg("train", *TINY, "--steps", "6", "--checkpoint-every", "2", "--output-dir", output,
                       "--loss", "ohem,dice:0.5,lovasz:0.25")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not epochs_in_history(output):  # the first epoch (and its backup) is done
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the first epoch did not finish"
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(output, "model.keras"))
    done_before_kill = epochs_in_history(output)
    assert done_before_kill and done_before_kill[0] == 0

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "other training settings" not in result.stderr  # the same command's are the same
    epochs = epochs_in_history(output)
    assert sorted(epochs) == [0, 1, 2]  # nothing redone, nothing missing
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert int(model.optimizer.iterations.numpy()) == 6
    terms = [type(term).__name__ for term, _ in model.loss.terms]
    assert terms == ["OhemCrossEntropy", "DiceLoss", "LovaszSoftmaxLoss"]


def test_a_bad_label_files_error_is_the_last_line(tmp_path):
    # The pipeline's reading threads went on with the next files and logged each one's
    # error (TensorFlow's C++ log, 17 lines each) after the command's message.
    from PIL import Image

    import numpy as np

    for n in range(8):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / f"f{n}.png")
        Image.fromarray(np.full((64, 64), 2, np.uint8)).save(tmp_path / f"f{n}_m.png")
    command = alignseg("train", *TINY[4:], "--dataset", "files", "--num-classes", "2",
                       "--images", str(tmp_path / "f?.png"), "--masks", str(tmp_path / "f?_m.png"),
                       "--steps", "2", "--output-dir", str(tmp_path / "run"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # the threads' logs shown, where CI hides them
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "op_kernel.cc" in result.stderr  # the threads' logs, before the message
    assert lines[-1].startswith("alignseg train: error: Label file"), result.stderr[-3000:]


def test_train_stops_with_a_clear_message_on_nan(tmp_path, capsys):
    output = str(tmp_path / "nan")
    code = main(["train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--lr", "1e30",
                 "--output-dir", output])
    assert code == 1
    out, err = capsys.readouterr()
    # The progress bar stopped at step 1 of 2: its line is ended before the message.
    assert "1/2" in out.splitlines()[-1] and out.endswith("\n"), repr(out[-200:])
    assert "\nalignseg train: error: Training stopped: the loss became" in "\n" + err, err
    assert "re-running the command starts over" in err and "--lr 1e+29" in err
    assert not os.path.exists(os.path.join(output, "model.keras"))
    assert not os.path.exists(os.path.join(output, "checkpoint.keras"))


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in alignseg catches it."""


def iterations(path):
    return int(keras.saving.load_model(path).optimizer.iterations.numpy())


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """`(folder, grow)`: a 150 MiB tmpfs that fills up at the first checkpoint; `grow()`
    makes room.

    Without the rights to mount one, ENOSPC is simulated at the first checkpoint.
    """
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode == 0:
        try:
            yield folder, lambda: subprocess.run(
                ["mount", "-o", "remount,size=800m", str(folder)], check=True)
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    from alignseg_keras.callbacks import AtomicModelCheckpoint

    def full(self, epoch, logs=None):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)", self.path)

    monkeypatch.setattr(AtomicModelCheckpoint, "on_epoch_end", full)
    yield folder, monkeypatch.undo


def test_full_disk_and_a_kill_during_the_final_save_lose_nothing(small_disk, monkeypatch,
                                                                 capsys):
    from alignseg_keras import callbacks

    disk, grow = small_disk
    output = str(disk / "run")
    command = ["train", *TINY, "--steps", "3", "--checkpoint-every", "2", "--output-dir", output]
    backup = os.path.join(output, "backup")

    # 1. No TensorBoard: said up front. The disk fills up at the first checkpoint.
    monkeypatch.setattr(callbacks, "tensorboard_available", lambda: False)
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "TensorBoard is not installed" in err and "the disk is full" in err
    assert "run the same command again to resume" in err
    assert os.listdir(backup) == ["epoch-0001.keras"]
    assert not [name for name in os.listdir(output) if name.startswith(".tmp-")]

    # 2. Room again; the re-run resumes, then is killed while writing model.keras.
    grow()
    save = keras.Model.save

    def killed_in_final_save(model, path, *args, **kwargs):
        if str(path).endswith("-model.keras"):
            open(path, "wb").write(b"torn")
            raise Killed()
        return save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", killed_in_final_save)
    with pytest.raises(Killed):
        main(command)
    monkeypatch.setattr(keras.Model, "save", save)
    assert not os.path.exists(os.path.join(output, "model.keras"))
    assert sorted(os.listdir(backup)) == ["epoch-0001.keras", "epoch-0002.keras"]
    assert iterations(os.path.join(output, "checkpoint.keras")) == 3  # 3 steps, not 4

    # 3. The re-run trains nothing more, writes model.keras, then drops the backups; a
    # checkpoint a kill left older than the last backup is brought up to it.
    open(os.path.join(output, ".tmp-1-0000dead-model.keras"), "wb").write(b"left by a kill")
    shutil.copyfile(os.path.join(backup, "epoch-0001.keras"),
                    os.path.join(output, "checkpoint.keras"))
    assert main(command) == 0
    assert iterations(os.path.join(output, "model.keras")) == 3
    assert iterations(os.path.join(output, "checkpoint.keras")) == 3
    assert not os.path.exists(backup)
    assert not [name for name in os.listdir(output) if name.startswith(".tmp-")]
    assert epochs_in_history(output) == [0, 1]

    # 4. A finished run is not started over (which would overwrite checkpoint.keras).
    capsys.readouterr()
    assert main(command) == 2
    assert "has finished" in capsys.readouterr().err


def test_an_output_folder_that_becomes_unwritable_is_reported_and_loses_nothing(
        tmp_path, monkeypatch, capsys):
    from alignseg_keras.callbacks import AtomicModelCheckpoint

    output = str(tmp_path / "run")
    command = ["train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--output-dir", output]

    def unwritable(self, epoch, logs=None):  # chmod 555 after the first backup
        raise PermissionError(errno.EACCES, "Permission denied", self.path)

    monkeypatch.setattr(AtomicModelCheckpoint, "on_epoch_end", unwritable)
    assert main(command) == 1  # a PermissionError traceback before
    err = capsys.readouterr().err
    assert "the output folder cannot be written" in err and "Traceback" not in err
    assert "run the same command again to resume" in err
    assert os.listdir(os.path.join(output, "backup")) == ["epoch-0001.keras"]
    monkeypatch.undo()
    assert main(command) == 0
    assert "Resuming from" in capsys.readouterr().out
    assert iterations(os.path.join(output, "model.keras")) == 4


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's error class")
def test_an_unwritable_log_folder_is_reported_as_the_output_folder_is(tmp_path, monkeypatch,
                                                                     capsys):
    # TensorBoard's event writer raises TensorFlow's PermissionDeniedError, no OSError: a
    # 20-line traceback ended the command.
    import tensorflow as tf

    output = str(tmp_path / "run")

    def unwritable(self, *args, **kwargs):
        raise tf.errors.PermissionDeniedError(None, None, "Could not initialize events writer.")

    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_train_begin", unwritable)
    assert main(["train", *TINY, "--steps", "2", "--output-dir", output]) == 1
    err = capsys.readouterr().err
    assert "the output folder cannot be written" in err and "Traceback" not in err


def test_a_command_with_other_model_arguments_leaves_the_run_resumable(tmp_path, capsys):
    output, command = run_killed_after_first_backup(tmp_path)
    other = with_value(command, "--decoder-channels", "16")
    capsys.readouterr()
    assert main(other) == 2  # the backups were moved aside and training started over
    err = capsys.readouterr().err
    assert "written by a model with other arguments" in err and "decoder_channels" in err
    assert os.listdir(os.path.join(output, "backup")) == ["epoch-0001.keras"]
    assert main(command) == 0
    assert "Resuming from" in capsys.readouterr().out
    assert iterations(os.path.join(output, "model.keras")) == 4


def test_a_resume_on_other_data_of_the_same_classes_is_refused(tmp_path, capsys):
    output, command = run_killed_after_first_backup(tmp_path)
    other = with_value(command, "--synthetic-images", "12")  # another experiment, the same model
    capsys.readouterr()
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "started on other training data (8 synthetic scenes of [64, 64], now 12" in err
    assert os.listdir(os.path.join(output, "backup")) == ["epoch-0001.keras"]
    assert main([*other, "--resume-with-other-data"]) == 0
    out = capsys.readouterr().out
    assert "Resuming on other training data" in out and "Resuming from" in out
    assert iterations(os.path.join(output, "model.keras")) == 4


def run_killed_after_first_backup(tmp_path):
    """`(output_dir, command)` of a 4-step tiny run killed after its first backup (of 2)."""
    output = str(tmp_path / "run")
    command = ["train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--output-dir", output]
    with pytest.raises(Killed):
        main_killed_after_first_backup(command)
    assert os.listdir(os.path.join(output, "backup")) == ["epoch-0001.keras"]
    return output, command


def with_value(command, option, value):
    """`command` with `option`'s value replaced."""
    other = [*command]
    other[other.index(option) + 1] = value
    return other


def main_killed_after_first_backup(command):
    """`main(command)`, stopped by a `Killed` once the first backup is written."""
    from alignseg_keras.callbacks import ResumableBackup

    save = ResumableBackup._save_model

    def save_then_kill(self):
        save(self)
        raise Killed()

    ResumableBackup._save_model = save_then_kill
    try:
        main(command)
    finally:
        ResumableBackup._save_model = save


def test_a_resume_with_another_checkpoint_interval_ends_at_the_requested_step(
        tmp_path, monkeypatch, capsys):
    from alignseg_keras.callbacks import ResumableBackup

    output = str(tmp_path / "run")
    save = ResumableBackup._save_model

    def killed_after_the_second_backup(self):
        save(self)
        if self._current_epoch == 2:
            raise Killed()

    monkeypatch.setattr(ResumableBackup, "_save_model", killed_after_the_second_backup)
    with pytest.raises(Killed):
        main(["train", *TINY, "--steps", "4", "--checkpoint-every", "1", "--output-dir", output])
    monkeypatch.undo()
    capsys.readouterr()
    # A --steps below the 2 done is refused and changes nothing (it ended the run there).
    backups = sorted(os.listdir(os.path.join(output, "backup")))
    assert main(["train", *TINY, "--steps", "1", "--output-dir", output]) == 2
    assert "--steps 1 is below the 2 steps done" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(output, "backup"))) == backups
    assert not os.path.exists(os.path.join(output, "model.keras"))
    # Epoch-counted, 2 backups of --checkpoint-every 3 would be 6 steps: the old plan ran none.
    assert main(["train", *TINY, "--steps", "4", "--checkpoint-every", "3",
                 "--output-dir", output]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 steps done" in out
    assert "2/2" in out  # the progress bar counts to the steps left
    assert iterations(os.path.join(output, "model.keras")) == 4
    # The kill came after the second backup, before its history row; the resume logs the third.
    assert epochs_in_history(output) == [0, 2]


def test_a_second_train_into_a_folder_in_use_is_refused(tmp_path, capsys):
    from alignseg_keras.atomic import single_writer

    output = tmp_path / "run"
    output.mkdir()
    in_flight = output / ".tmp-1234-0000abcd-checkpoint.keras"  # the running writer's
    in_flight.write_text("half a checkpoint")
    with single_writer(str(output), "alignseg train"):  # as a run in progress holds it
        assert main(["train", *TINY, "--steps", "2", "--output-dir", str(output)]) == 2
    assert f"is in use by another alignseg train (process {os.getpid()})" in capsys.readouterr().err
    assert in_flight.exists()  # not removed as a killed run's
    assert not (output / "model.keras").exists()


def test_evaluate_prints_a_table_with_miou(tmp_path, capsys):
    from alignseg_keras import AlignSeg
    from alignseg_keras import data

    model = AlignSeg(len(data.SYNTHETIC_CLASSES), backbone="resnet18", decoder_channels=8,
                     context_hidden_channels=16)
    path = str(tmp_path / "m.keras")
    model.save(path)
    args = ["evaluate", "--model", path, "--dataset", "synthetic", "--synthetic-images", "8",
            "--synthetic-size", "64", "64", "--limit", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "road" in out and out.strip().splitlines()[-1].startswith("mIoU: ")
    assert main([*args, "--sliding", "48", "--scales", "0.75", "1.0", "--flip"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mIoU: ")


def test_output_dirs_that_are_files_or_read_only_are_reported(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["train", *TINY, "--output-dir", str(a_file)]) == 2
    assert f"--output-dir {a_file} is a file, not a folder" in capsys.readouterr().err
    assert main(["train", *TINY, "--output-dir", str(a_file / "run")]) == 2
    assert f"--output-dir {a_file / 'run'} cannot be written" in capsys.readouterr().err
    with read_only_folder(tmp_path / "read_only") as folder:
        assert main(["train", *TINY, "--output-dir", str(folder)]) == 2
    assert f"--output-dir {folder} cannot be written" in capsys.readouterr().err


def test_bad_arguments_are_reported(tmp_path, capsys):
    assert main(["train", "--dataset", "cityscapes", "--output-dir", str(tmp_path)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "missing.keras")]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--precision", "float8"])


def test_nan_message_resumes_from_before_the_divergence(tmp_path, capsys):
    import argparse

    from alignseg_keras.callbacks import NonFiniteLossError
    from alignseg_keras.callbacks import ResumableBackup
    from alignseg_keras.cli.train import _nan_message

    folder = tmp_path / "backup"
    folder.mkdir()
    for name in ("epoch-0001.keras", "epoch-0002.keras"):
        (folder / name).write_bytes(b"a backup")
    backup = ResumableBackup(str(folder))
    backup._newest = (str(folder / "epoch-0002.keras"), 4)  # saved after step 4
    error = NonFiniteLossError("Training stopped: the loss became nan at step 5.", step=5)
    message = _nan_message(error, backup, argparse.Namespace(lr=0.01))
    assert f"resumes from {folder / 'epoch-0001.keras'}, the newest backup with finite weights" in message
    assert "the loss may have grown before it: see history.csv" in message
    assert "--lr 0.001" in message
    assert "epoch-0002.diverged-" in capsys.readouterr().err
    assert [epoch for epoch, _ in backup.backups()] == [1]


def test_nan_message_of_a_process_other_than_0_leaves_the_backups_to_it(
        tmp_path, capsys, monkeypatch):
    import argparse

    from alignseg_keras import multiprocess
    from alignseg_keras.callbacks import NonFiniteLossError
    from alignseg_keras.callbacks import ResumableBackup
    from alignseg_keras.cli.train import _nan_message

    folder = tmp_path / "backup"
    folder.mkdir()
    for name in ("epoch-0001.keras", "epoch-0002.keras"):
        (folder / name).write_bytes(b"a backup")
    monkeypatch.setattr(multiprocess, "process_index", lambda: 1)
    [backup] = multiprocess.callbacks_for_this_process([ResumableBackup(str(folder))])
    backup._newest = (str(folder / "epoch-0002.keras"), 4)  # process 0 moves it
    error = NonFiniteLossError("Training stopped: the loss became nan at step 5.", step=5)
    message = _nan_message(error, backup, argparse.Namespace(lr=0.01))
    assert "resumes from" not in message  # epoch-0002, diverged, would be named
    assert "Process 0 of the job says where re-running the command resumes" in message
    assert "--lr 0.001" in message
    assert sorted(os.listdir(folder)) == ["epoch-0001.keras", "epoch-0002.keras"]


def test_starting_over_moves_the_previous_checkpoint_aside(tmp_path, capsys):
    from alignseg_keras.cli.train import _set_aside_previous_run

    (tmp_path / "checkpoint.keras").write_bytes(b"trained weights")
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n")
    (tmp_path / "logs" / "train").mkdir(parents=True)  # TensorBoard mixed the two runs' points
    _set_aside_previous_run(str(tmp_path))
    assert "training starts over" in capsys.readouterr().err
    moved = sorted(name for name in os.listdir(tmp_path) if ".previous-" in name)
    assert [name.split(".previous-")[0] for name in moved] == ["checkpoint", "history", "logs"]
    assert (tmp_path / moved[2] / "train").is_dir() and not (tmp_path / "logs").exists()
    assert (tmp_path / moved[0]).read_bytes() == b"trained weights"
    assert not (tmp_path / "checkpoint.keras").exists()
