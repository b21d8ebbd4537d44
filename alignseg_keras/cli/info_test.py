import json

import pytest

from alignseg_keras.cli import build_parser
from alignseg_keras.cli import main
from alignseg_keras.cli.info import parse_size
from alignseg_keras.model_cost import model_cost
from alignseg_keras.testing import tiny_alignseg


@pytest.fixture(scope="module")
def model_and_path(tmp_path_factory):
    model = tiny_alignseg(num_classes=4)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return model, str(path)


def test_info_is_a_subcommand():
    args = build_parser().parse_args(["info", "--preset", "alignseg_resnet18_small"])
    assert args.size == "1024x2048" and not args.json


def test_table_lists_parts_and_totals(model_and_path, capsys):
    model, path = model_and_path
    assert main(["info", "--model", path, "--size", "64x128"]) == 0
    out = capsys.readouterr().out
    for text in ("parameters", "GMACs", "GFLOPs", "share", "image_encoder (resnet18)", "rcb1a",
                 "align_fa2", "align_cm", "head", "total (inference)",
                 "auxiliary_head (training only)", "1 MAC = 2 FLOPs"):
        assert text in out, text
    cost = model_cost(model, (64, 128))
    total = next(line for line in out.splitlines() if line.startswith("total (inference)"))
    assert f"{cost.inference_parameters:,}" in total
    assert f"{cost.macs / 1e9:,.2f}" in total and f"{2 * cost.macs / 1e9:,.2f}" in total


def test_json_matches_the_library(model_and_path, capsys):
    model, path = model_and_path
    assert main(["info", "--model", path, "--size", "96", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cost = model_cost(model, (96, 96))
    assert report["image_size"] == [96, 96]
    assert report["total"]["macs"] == cost.macs
    assert report["total"]["flops"] == 2 * cost.macs
    assert report["total"]["parameters"] == cost.parameters
    assert [part["part"] for part in report["parts"]] == [row.part for row in cost.rows]
    shares = [part["share"] for part in report["parts"] if part["share"] is not None]
    assert sum(shares) == pytest.approx(1.0)
    assert report["uncounted"] == []


def test_offset_heads_as_computed(model_and_path, capsys):
    model, path = model_and_path
    assert main(["info", "--model", path, "--size", "96", "--json", "--offset-heads", "computed"]) == 0
    report = json.loads(capsys.readouterr().out)
    computed = model_cost(model, (96, 96), offset_heads="computed")
    assert report["total"]["macs"] == computed.macs < model_cost(model, (96, 96)).macs


def test_named_preset_with_classes(capsys):
    assert main(["info", "--preset", "alignseg_resnet18_small", "--num-classes", "7",
                 "--size", "64x64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    head = next(part for part in report["parts"] if part["part"] == "head")
    # 3x3 64 -> 64 (with bias) + 1x1 64 -> 7 (with bias), BN scale and shift.
    assert head["parameters"] == 9 * 64 * 64 + 64 + 2 * 64 + 64 * 7 + 7


@pytest.mark.parametrize("size", ["0x5", "big", "12x", "-3"])
def test_bad_size_is_an_error(model_and_path, size, capsys):
    _, path = model_and_path
    assert main(["info", "--model", path, "--size", size]) == 2
    assert "--size" in capsys.readouterr().err
    with pytest.raises(ValueError):
        parse_size(size)


def test_num_classes_needs_a_named_preset(model_and_path, capsys):
    _, path = model_and_path
    assert main(["info", "--model", path, "--num-classes", "3"]) == 2
    assert "--num-classes" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("1024x2048") == (1024, 2048)
    assert parse_size("512") == (512, 512)
    assert parse_size("769X769") == (769, 769)
