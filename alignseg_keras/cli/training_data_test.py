import argparse
import json
import os

import pytest

from alignseg_keras.cli import training_data


def files_args(label_map=None):
    return argparse.Namespace(dataset="files", label_map=label_map)


def pairs(folder, names):
    return ([os.path.join(folder, "images", f"{name}.jpg") for name in names],
            [os.path.join(folder, "labels", f"{name}_mask.png") for name in names])


def test_files_are_told_by_their_names_not_their_folder():
    here = training_data.describe(files_args(), pairs("/data/a", ["f1", "f2", "f3"]))
    moved = training_data.describe(files_args(), pairs("/scratch/job7/a", ["f1", "f2", "f3"]))
    assert here == moved
    assert here["pairs"] == 3 and here["first"] == "f1.jpg f1_mask.png"
    assert training_data.difference(here, moved) == ""


def test_other_files_of_the_same_count_and_ends_differ_in_between():
    recorded = training_data.describe(files_args(), pairs("/d", ["f1", "f2", "f3"]))
    current = training_data.describe(files_args(), pairs("/d", ["f1", "g2", "f3"]))
    assert training_data.difference(recorded, current) == (
        "3 image/label pairs from 'f1.jpg f1_mask.png' to 'f3.jpg f3_mask.png', now 3 image/label "
        "pairs from 'f1.jpg f1_mask.png' to 'f3.jpg f3_mask.png' (other pairs in between)")


def test_images_paired_with_other_labels_differ():
    images, masks = pairs("/d", ["f1", "f2"])
    recorded = training_data.describe(files_args(), (images, masks))
    current = training_data.describe(files_args(), (images, masks[::-1]))
    assert training_data.difference(recorded, current)


def test_synthetic_scenes_and_named_datasets():
    synthetic = argparse.Namespace(dataset="synthetic", synthetic_images=8, synthetic_size=(64, 64))
    more = argparse.Namespace(dataset="synthetic", synthetic_images=12, synthetic_size=(64, 64))
    cityscapes = argparse.Namespace(dataset="cityscapes", data_dir="/anywhere")
    moved = argparse.Namespace(dataset="cityscapes", data_dir="/elsewhere")
    describe = training_data.describe
    assert training_data.difference(describe(synthetic, None), describe(more, None)) == (
        "8 synthetic scenes of [64, 64], now 12 of [64, 64]")
    assert training_data.difference(describe(synthetic, None), describe(cityscapes, None)) == (
        "--dataset synthetic, now cityscapes")
    assert training_data.difference(describe(cityscapes, None), describe(moved, None)) == ""


def test_a_resume_on_other_data_is_refused_and_the_record_kept(tmp_path):
    first = {"dataset": "synthetic", "images": 8, "size": [64, 64]}
    other = {"dataset": "synthetic", "images": 12, "size": [64, 64]}
    training_data.check_and_record(str(tmp_path), first, resumed=False)
    with pytest.raises(training_data.OtherTrainingDataError,
                       match=r"started on other training data \(8 synthetic scenes .* now 12 .*"
                       r"--resume-with-other-data"):
        training_data.check_and_record(str(tmp_path), other, resumed=True)
    assert training_data.read(str(tmp_path)) == first
    training_data.check_and_record(str(tmp_path), first, resumed=True)  # the same data resume


def test_resuming_with_other_data_when_asked_records_them(tmp_path, capsys):
    first = {"dataset": "synthetic", "images": 8, "size": [64, 64]}
    other = {"dataset": "synthetic", "images": 12, "size": [64, 64]}
    training_data.check_and_record(str(tmp_path), first, resumed=False)
    training_data.check_and_record(str(tmp_path), other, resumed=True, allow_other=True)
    assert "Resuming on other training data" in capsys.readouterr().out
    assert training_data.read(str(tmp_path)) == other


def test_a_run_that_starts_over_records_its_data_whatever_was_there(tmp_path):
    (tmp_path / training_data.RECORD_NAME).write_text(json.dumps({"dataset": "ade20k"}))
    current = {"dataset": "synthetic", "images": 8, "size": [64, 64]}
    training_data.check_and_record(str(tmp_path), current, resumed=False)
    assert training_data.read(str(tmp_path)) == current


@pytest.mark.parametrize("content", [None, "{torn", "[1, 2]"])
def test_a_resume_without_a_readable_record_goes_on_and_records(tmp_path, content, capsys):
    if content is not None:  # a run of an earlier version has none; a torn or foreign file
        (tmp_path / training_data.RECORD_NAME).write_text(content)
    current = {"dataset": "cityscapes"}
    training_data.check_and_record(str(tmp_path), current, resumed=True)
    assert training_data.read(str(tmp_path)) == current
    # Said, not silent (a deleted record turned the check off without a word).
    assert "the data could not be checked against the run's" in capsys.readouterr().out
    training_data.check_and_record(str(tmp_path), current, resumed=True)
    assert capsys.readouterr().out == ""


def test_another_label_map_is_other_data():
    names = pairs("/d", ["f1", "f2"])
    plain = training_data.describe(files_args(), names)
    binary = training_data.describe(files_args({255: 1, 0: 0}), names)
    assert binary["label_map"] == "0:0,255:1"
    assert training_data.difference(plain, binary) == "--label-map none, now 0:0,255:1"
    assert training_data.difference(binary, binary) == ""


def test_files_of_the_same_names_with_other_contents_differ(tmp_path):
    # Frames numbered alike per camera: cam1/000001.png and cam2/000001.png.
    for camera, content in (("cam1", b"x" * 10), ("cam2", b"y" * 12)):
        for kind in ("images", "labels"):
            (tmp_path / camera / kind).mkdir(parents=True)
            (tmp_path / camera / kind / "000001.png").write_bytes(content)

    def record(camera):
        folder = tmp_path / camera
        return training_data.describe(files_args(), ([str(folder / "images/000001.png")],
                                                     [str(folder / "labels/000001.png")]))

    assert record("cam1")["first"] == "000001.png 000001.png"
    assert training_data.difference(record("cam1"), record("cam2")) == (
        "1 image/label pairs from '000001.png 000001.png' to '000001.png 000001.png' of the "
        "same names in both, but files of other sizes: other contents")
    assert training_data.difference(record("cam1"), record("cam1")) == ""


def test_subfolders_below_the_common_folder_are_kept():
    images = ["/d/imgs/siteA/f0.png", "/d/imgs/siteB/f0.png"]
    masks = ["/d/masks/siteA/f0_m.png", "/d/masks/siteB/f0_m.png"]
    record = training_data.describe(files_args(), (images, masks))
    assert (record["first"], record["last"]) == ("siteA/f0.png siteA/f0_m.png",
                                                 "siteB/f0.png siteB/f0_m.png")


def test_names_that_are_not_utf8_are_recorded(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # a surrogate escape: its hash failed
    record = training_data.describe(files_args(), ([f"/d/i/{name}"], [f"/d/m/{name}"]))
    training_data.write(str(tmp_path), record)
    assert training_data.read(str(tmp_path)) == record
