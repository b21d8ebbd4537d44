import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from alignseg_keras import cli
from alignseg_keras.testing import tiny_alignseg
from alignseg_keras.visualize import load_image
from alignseg_keras.visualize import save_png

VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


def test_the_program_caches_kernels_only_for_the_commands_that_infer(monkeypatch):
    environment = {}
    seen = []
    monkeypatch.setattr(cli.os, "environ", environment)
    monkeypatch.setattr(cli, "main", lambda argv: seen.append((argv[0], environment.get(VARIABLE))) or 0)
    for command in ("train", "export", "convert", "info"):
        assert cli.program([command, "--help"]) == 0
    assert VARIABLE not in environment
    for command in ("predict", "evaluate"):
        environment.clear()
        cli.program([command, "x"])
    environment[VARIABLE] = "0"  # the user's choice stays
    cli.program(["predict", "x"])
    assert seen == [("train", None), ("export", None), ("convert", None), ("info", None),
                    ("predict", "1"), ("evaluate", "1"), ("predict", "0")]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's oneDNN switch")
def test_the_program_predicts_as_main_does(tmp_path, capsys):
    model = tiny_alignseg(num_classes=19)
    model.save(tmp_path / "model.keras")
    image = tmp_path / "in" / "image.png"
    save_png(image, np.random.default_rng(0).integers(0, 256, (48, 64, 3)).astype("uint8"))
    arguments = ["predict", str(image), "--model", str(tmp_path / "model.keras"), "--output"]
    before = os.environ.get(VARIABLE)
    assert cli.main(arguments + [str(tmp_path / "main")]) == 0
    # A process of its own, as the `alignseg` command runs it; it reports the variable it ran with.
    script = ("import os, sys\nfrom alignseg_keras.cli import program\ncode = program(sys.argv[1:])\n"
              f"print(os.environ.get({VARIABLE!r}))\nsys.exit(code)")
    environment = {key: value for key, value in os.environ.items() if key != VARIABLE}
    result = subprocess.run([sys.executable, "-c", script, *arguments, str(tmp_path / "program")],
                            env={**environment, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "1"
    assert os.environ.get(VARIABLE) == before  # main, in this process, left it alone
    expected = load_image(tmp_path / "main" / "image_color.png")
    colors = load_image(tmp_path / "program" / "image_color.png")
    # The same float32 arithmetic with the kernels reordered once: the same labels.
    assert np.array_equal(colors, expected)


@pytest.mark.parametrize("command", cli.SUBCOMMANDS)
def test_every_help_text_reads_as_written(command, capsys):
    # argparse unescapes "%%" in help= strings only; a description keeps both signs.
    with pytest.raises(SystemExit) as stop:
        cli.build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "usage: alignseg" in text and "%%" not in text
