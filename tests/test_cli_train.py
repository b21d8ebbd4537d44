"""`alignseg train` and `alignseg evaluate` end to end: resume after a kill, NaN stop, tables."""

import csv
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

from alignseg_keras.cli import main

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
    command = alignseg("train", *TINY, "--steps", "6", "--checkpoint-every", "2", "--output-dir", output)
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
    epochs = epochs_in_history(output)
    assert sorted(epochs) == [0, 1, 2]  # nothing redone, nothing missing
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert int(model.optimizer.iterations.numpy()) == 6


def test_train_stops_with_a_clear_message_on_nan(tmp_path, capsys):
    output = str(tmp_path / "nan")
    code = main(["train", *TINY, "--steps", "4", "--checkpoint-every", "2", "--lr", "1e30",
                 "--output-dir", output])
    assert code == 1
    assert "the loss became" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(output, "model.keras"))


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


def test_bad_arguments_are_reported(tmp_path, capsys):
    assert main(["train", "--dataset", "cityscapes", "--output-dir", str(tmp_path)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "missing.keras")]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--precision", "float8"])
