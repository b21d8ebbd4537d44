"""`alignseg train` wiring: the model's mean pads crops, --preset, defaults read from the
library, and subcommands that fail to load fail loudly."""

import os
import re

import keras
import numpy as np
import pytest

from alignseg_keras import AlignSeg
from alignseg_keras import cli
from alignseg_keras import inference
from alignseg_keras.cli import build_parser
from alignseg_keras.cli.common import signature_defaults
from alignseg_keras.cli.train import _build_model
from alignseg_keras.cli.train import _check_arguments
from alignseg_keras.cli.train import _resume_message
from alignseg_keras.cli.train import epoch_plan
from alignseg_keras.cli.train import resolve_pipeline_defaults
from alignseg_keras.cli.train import training_batches
from alignseg_keras.layers.alignment import ALIGNMENT_MODES
from alignseg_keras.losses import OhemCrossEntropy
from alignseg_keras.testing import tiny_alignseg

TINY = ["--backbone", "resnet18", "--decoder-channels", "8", "--context-hidden-channels", "16"]


def train_args(*arguments):
    return resolve_pipeline_defaults(build_parser().parse_args(["train", *arguments]))


def test_defaults_are_read_from_the_library():
    from alignseg_keras.data import training_pipeline

    args = train_args()
    compile_defaults = signature_defaults(AlignSeg.compile)
    pipeline = signature_defaults(training_pipeline)
    ohem = signature_defaults(OhemCrossEntropy)
    assert args.lr == compile_defaults["learning_rate"]
    assert args.weight_decay == compile_defaults["weight_decay"]
    assert args.aux_weight == compile_defaults["aux_loss_weight"]
    assert args.warmup_steps == compile_defaults["warmup_steps"]
    assert (args.ohem_threshold, args.ohem_min_kept) == (ohem["threshold"], ohem["min_kept"])
    assert args.batch_size == pipeline["batch_size"]
    assert tuple(args.crop_size) == tuple(pipeline["crop_size"])
    assert tuple(args.scale_range) == tuple(pipeline["scale_range"])
    # Architecture options left out are not passed: AlignSeg's (or the preset's) apply.
    assert args.backbone is None and args.alignment is None and args.preset is None
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    alignment = next(a for a in train._actions if a.dest == "alignment")
    assert tuple(alignment.choices) == ALIGNMENT_MODES
    evaluate = build_parser().parse_args(["evaluate", "--model", "m.keras"])
    assert evaluate.overlap == signature_defaults(inference.predict_sliding)["overlap"]
    assert evaluate.batch_size == signature_defaults(inference.predict_whole)["batch_size"]


def test_training_crops_are_padded_with_the_models_mean():
    import tensorflow as tf

    mean = (10.0, 20.0, 30.0)
    model = tiny_alignseg(num_classes=3, mean=mean, std=(50.0, 50.0, 50.0))
    assert tuple(model.image_converter.mean) == mean
    images = np.full((2, 16, 16, 3), 200, "uint8")
    masks = np.zeros((2, 16, 16), "uint8")
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    args = train_args("--crop-size", "32", "32", "--scale-range", "1", "1", "--batch-size", "2")
    batch_images, batch_masks = next(iter(training_batches(dataset, model, args)))
    batch_images, batch_masks = np.asarray(batch_images), np.asarray(batch_masks)
    padded = batch_masks == 255
    assert padded.any() and (~padded).any()
    np.testing.assert_allclose(batch_images[padded], np.broadcast_to(mean, (padded.sum(), 3)))
    np.testing.assert_allclose(batch_images[~padded], 200.0)


def test_the_scale_step_option_draws_scales_of_its_grid():
    import tensorflow as tf

    model = tiny_alignseg(num_classes=3)
    images = np.full((8, 16, 16, 3), 200, "uint8")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros((8, 16, 16), "uint8")))
    # A 16x16 image at scale 0.5 or 1 covers 8x8 or 16x16 of a 32x32 crop.
    args = train_args("--crop-size", "32", "32", "--scale-range", "0.5", "1", "--scale-step",
                      "0.5", "--batch-size", "8")
    _, masks = next(iter(training_batches(dataset, model, args)))
    labelled = np.sum(np.asarray(masks) != 255, axis=(1, 2))
    assert set(labelled) <= {64, 256} and len(set(labelled)) == 2, labelled
    with pytest.raises(ValueError, match="--scale-step must be positive"):
        _check_arguments(train_args("--scale-step", "0"))


def test_train_builds_from_a_preset_name_or_directory(tmp_path, capsys):
    args = train_args("--preset", "alignseg_resnet18_small", "--decoder-channels", "8")
    model = _build_model(args, num_classes=4)
    assert model.num_classes == 4 and model.backbone.decoder_channels == 8
    assert model.backbone.context_merge == "sum"  # the preset's own, not overridden
    assert model.optimizer is not None

    saved = tiny_alignseg(num_classes=3)
    saved.save_to_preset(tmp_path / "preset")
    # Other classes than the preset's: every weight but the heads' is the preset's.
    model = _build_model(train_args("--preset", str(tmp_path / "preset")), num_classes=5)
    assert model.num_classes == 5
    for mine, theirs in zip(model.backbone.weights, saved.backbone.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    with pytest.raises(ValueError, match="--decoder-channels would change the architecture"):
        _build_model(train_args("--preset", str(tmp_path / "preset"), "--decoder-channels", "8"),
                     num_classes=3)
    # A backbone's preset alone: heads of the data's classes are trained on it; the other
    # commands need a whole model, and say so.
    saved.backbone.save_to_preset(tmp_path / "backbone")
    model = _build_model(train_args("--preset", str(tmp_path / "backbone")), num_classes=5)
    assert model.num_classes == 5
    for mine, theirs in zip(model.backbone.weights, saved.backbone.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    picture = tmp_path / "street.png"
    picture.write_bytes(b"")
    assert cli.main(["predict", str(picture), "--preset", str(tmp_path / "backbone"),
                     "--output", str(tmp_path / "out")]) == 2
    assert ("is the preset of an AlignSegBackbone alone, without heads: this command needs a "
            "whole model") in capsys.readouterr().err


def test_training_uses_xla_on_tensorflow_only_when_asked():
    # TensorFlow: graphs without XLA unless --xla (tests/test_jax_backend.py: JAX always).
    assert _build_model(train_args(*TINY), num_classes=3).jit_compile is False
    assert _build_model(train_args(*TINY, "--xla"), num_classes=3).jit_compile is True


def test_ctrl_c_ends_with_a_word_on_resuming_not_a_traceback(monkeypatch, capsys):
    from alignseg_keras.cli import train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err == ("alignseg train: error: interrupted; re-run the same "
                                       "command to resume from its last backup.\n")


def test_a_subcommand_that_cannot_load_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, "nonexistent"))
    with pytest.raises(ImportError, match=r"'nonexistent' \(alignseg_keras.cli.nonexistent\)"):
        build_parser()


def test_a_subcommand_whose_dependency_is_missing_names_itself(monkeypatch):
    from alignseg_keras.cli import predict

    def broken(subparsers):
        raise ModuleNotFoundError("No module named 'PIL'", name="PIL")

    monkeypatch.setattr(predict, "add_parser", broken)
    with pytest.raises(ImportError, match="'predict'.*No module named 'PIL'"):
        build_parser()


def test_the_loss_option_builds_the_named_losses():
    from alignseg_keras import losses
    from alignseg_keras.cli.train import training_loss

    assert type(training_loss(train_args())) is losses.SegmentationCrossEntropy
    ohem = training_loss(train_args("--ohem", "--ohem-threshold", "0.6", "--ohem-min-kept", "9"))
    assert isinstance(ohem, losses.OhemCrossEntropy) and (ohem.threshold, ohem.min_kept) == (0.6, 9)
    assert isinstance(training_loss(train_args("--loss", "ohem")), losses.OhemCrossEntropy)
    combined = training_loss(train_args("--loss", "focal:1,lovasz:0.5", "--focal-gamma", "1.5"))
    assert isinstance(combined, losses.CombinedLoss)
    focal = [term for term, _ in combined.terms if isinstance(term, losses.FocalLoss)][0]
    assert focal.gamma == 1.5
    assert train_args().focal_gamma == signature_defaults(losses.FocalLoss)["gamma"]
    with pytest.raises(ValueError, match="disagree"):
        training_loss(train_args("--ohem", "--loss", "dice"))
    with pytest.raises(ValueError, match="Unknown loss"):
        training_loss(train_args("--loss", "bce"))


@pytest.mark.parametrize("arguments, message", [
    # A negative rate climbed the loss (-0.05, 1.44, 7.77) to "Saved the trained model".
    (["--lr", "-1"], "--lr must be a positive number; received -1.0."),
    (["--lr", "nan"], "--lr must be a positive number; received nan."),
    (["--aux-weight", "-1"], "--aux-weight must be a number of at least 0; received -1.0."),
    (["--steps", "10", "--warmup-steps", "10"],
     r"--warmup-steps must be at least 0 and fewer than --steps \(10\); received 10."),
    # Options of a loss not used were ignored without a word.
    (["--ohem-threshold", "0.9"], "--ohem-threshold sets the ohem loss, which neither --loss ce "
                                  "nor --aux-loss uses"),
    (["--loss", "dice", "--focal-gamma", "1"], "--focal-gamma sets the focal loss"),
    # A typo failed in keras-hub's words ("a built-in preset identifier like 'bert_base_en'").
    (["--backbone", "resnet17"], r"'resnet17' is neither one of this library's ResNets \(resnet18, "
                                 r".*; did you mean resnet18"),
])
def test_training_arguments_that_would_train_wrongly_are_refused(arguments, message):
    if "--backbone" in arguments:
        pytest.importorskip("keras_hub", reason="keras-hub is an optional extra")
    with pytest.raises(ValueError, match=message):
        _check_arguments(train_args(*arguments))


def test_training_arguments_that_are_fine():
    for arguments in (["--ohem", "--ohem-threshold", "0.9"], ["--aux-loss", "ohem", "--ohem-min-kept", "5"],
                      ["--loss", "ce:1,focal:0.5", "--focal-gamma", "1"], ["--aux-weight", "0"],
                      ["--steps", "10", "--warmup-steps", "9"], ["--backbone", "resnet50"]):
        _check_arguments(train_args(*arguments))


def test_the_aux_loss_option_gives_the_deep_supervision_head_its_own_loss():
    from alignseg_keras import losses

    # The authors' train.py with --ohem True (CriterionOhemDSN, docs/training.md).
    model = _build_model(
        train_args(*TINY, "--loss", "ce:1,lovasz:0.8", "--aux-loss", "ce", "--aux-weight", "0.1"),
        num_classes=3,
    )
    assert isinstance(model.loss, losses.CombinedLoss)
    assert type(model.aux_loss) is losses.SegmentationCrossEntropy
    assert model.aux_loss_weight == 0.1
    ohem = _build_model(train_args(*TINY, "--aux-loss", "ohem", "--ohem-min-kept", "9"),
                        num_classes=3).aux_loss
    assert isinstance(ohem, losses.OhemCrossEntropy) and ohem.min_kept == 9
    assert _build_model(train_args(*TINY), num_classes=3).aux_loss is None  # the main loss
    with pytest.raises(ValueError, match="--aux-loss: Unknown loss 'bce'"):
        _check_arguments(train_args("--aux-loss", "bce"))


@pytest.mark.parametrize(
    "total, every, epochs_done, steps_done, expected",
    [
        (4, 1000, 0, 0, (1, 4)),  # fewer steps than one checkpoint: the bar counts to 4
        (2500, 1000, 0, 0, (3, 1000)),  # StopAtStep ends the third epoch at 500 steps
        (6, 2, 1, 2, (3, 2)),  # resumed with the same --checkpoint-every
        (4, 3, 2, 2, (3, 2)),  # resumed with a larger one: 2 steps left, not 0
        (10, 2, 1, 3, (5, 2)),  # resumed with a smaller one: 7 steps left, not 8
        (4, 2, 2, 4, (2, 2)),  # all done (killed before the final save): nothing runs
        (4, 2, 3, 6, (3, 2)),  # --steps lowered below what was done: nothing runs
    ],
)
def test_the_epoch_plan_ends_at_the_requested_step(total, every, epochs_done, steps_done,
                                                   expected):
    epochs, steps_per_epoch = epoch_plan(total, every, epochs_done, steps_done)
    assert (epochs, steps_per_epoch) == expected
    if epochs > epochs_done:  # whole epochs reach the total; one fewer would not
        run = (epochs - epochs_done) * steps_per_epoch
        assert steps_done + run >= total > steps_done + run - steps_per_epoch


def test_a_resume_with_steps_below_those_done_is_refused():
    # It ended the run (saved model.keras, removed the backups), after which the command
    # with the right --steps was refused as a finished run's: a typo ended a long run.
    assert _resume_message("b/epoch-0001.keras", 2, 4) == (
        "Resuming from b/epoch-0001.keras: 2 of 4 steps done.")
    assert _resume_message("b/epoch-0002.keras", 4, 4).endswith("4 of 4 steps done.")
    with pytest.raises(ValueError, match=r"--steps 4 is below the 6 steps done by the backup "
                                         r"b/epoch-0003.keras; nothing was changed .* --steps 6 "):
        _resume_message("b/epoch-0003.keras", 6, 4)


def test_files_of_the_glob_pair_by_name_not_by_sorted_position(tmp_path):
    from PIL import Image

    from alignseg_keras.cli.common import load_dataset

    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    for n in range(1, 12):
        Image.fromarray(np.full((4, 6, 3), n, np.uint8)).save(tmp_path / "imgs" / f"frame_{n}.png")
        Image.fromarray(np.full((4, 6), n, np.uint8)).save(tmp_path / "masks" / f"frame_{n}_mask.png")
    args = train_args("--dataset", "files", "--num-classes", "12",
                      "--images", str(tmp_path / "imgs" / "*.png"),
                      "--masks", str(tmp_path / "masks" / "*.png"))
    dataset, _, _ = load_dataset(args, "train")
    pairs = [(int(image[0, 0, 0]), int(mask[0, 0])) for image, mask in dataset.as_numpy_iterator()]
    assert len(pairs) == 11 and all(image == mask for image, mask in pairs)
    # Training reads them pass after pass, each in a permutation drawn from --seed and
    # the pass number: the same stream in every iterator (also one created after
    # another has read ahead, as Keras' JAX fit peeks) and in every process.
    stream, _, _ = load_dataset(args, "train", training=True)
    ahead = iter(stream)
    next(ahead)
    values = [int(image[0, 0, 0]) for image, _ in stream.take(33).as_numpy_iterator()]
    passes = [values[:11], values[11:22], values[22:]]
    assert all(sorted(one) == sorted(first for first, _ in pairs) for one in passes)
    assert passes[0] != sorted(passes[0]) and len({tuple(one) for one in passes}) == 3
    again, _, _ = load_dataset(args, "train", training=True)
    assert [int(image[0, 0, 0]) for image, _ in again.take(33).as_numpy_iterator()] == values
    args.seed = 1
    other, _, _ = load_dataset(args, "train", training=True)
    assert [int(image[0, 0, 0]) for image, _ in other.take(33).as_numpy_iterator()] != values


def test_class_counts_of_the_command_line_are_checked(capsys):
    from alignseg_keras.cli.common import load_dataset

    # --num-classes 0 was read as not given; with a dataset of its own classes it was ignored.
    with pytest.raises(ValueError, match="`num_classes` must be at least 2; received 0"):
        load_dataset(train_args("--dataset", "files", "--num-classes", "0"), "train")
    with pytest.raises(ValueError, match="--num-classes is for --dataset files; --dataset "
                                         "synthetic has its own classes"):
        load_dataset(train_args("--num-classes", "5"), "train")
    assert cli.main(["info", "--preset", "alignseg_resnet18_small", "--num-classes", "0"]) == 2
    assert "`num_classes` must be at least 2; received 0" in capsys.readouterr().err


def test_a_bad_file_of_the_dataset_is_named_before_training(tmp_path):
    # It stopped the run when the pipeline reached it, possibly hours in, every pass.
    from PIL import Image

    from alignseg_keras.cli.common import load_dataset

    for n in range(3):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / f"f{n}.jpg")
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / f"f{n}_mask.png")
    (tmp_path / "f1.jpg").write_bytes(b"\xff\xd8 cut short")
    args = train_args("--dataset", "files", "--num-classes", "3", "--images",
                      str(tmp_path / "*.jpg"), "--masks", str(tmp_path / "*_mask.png"))
    with pytest.raises(ValueError, match=r"1 of 3 image and label pairs cannot be used: Cannot "
                                         r"read image file '.*f1.jpg'"):
        load_dataset(args, "train", training=True)


@pytest.mark.parametrize("dataset", ["cityscapes", "ade20k"])
def test_a_named_datasets_bad_files_are_named_before_training(tmp_path, dataset):
    from PIL import Image

    from alignseg_keras.cli.common import load_dataset

    def write(path, size, mode):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size).save(path)

    for index, label_width in enumerate([32, 31]):  # the second pair's sizes differ
        if dataset == "cityscapes":
            image = tmp_path / "leftImg8bit/train/aachen" / f"aachen_{index}_leftImg8bit.png"
            label = tmp_path / "gtFine/train/aachen" / f"aachen_{index}_gtFine_labelIds.png"
        else:
            image = tmp_path / "images/training" / f"ADE_train_{index}.jpg"
            label = tmp_path / "annotations/training" / f"ADE_train_{index}.png"
        write(image, (32, 16), "RGB")
        write(label, (label_width, 16), "L")
    args = build_parser().parse_args(["train", "--dataset", dataset, "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"1 of 2 image and label pairs cannot be used.*_1"):
        load_dataset(args, "train", training=True)


def test_label_files_are_found_at_any_depth_counted_and_mapped(tmp_path, capsys):
    from PIL import Image

    from alignseg_keras.cli.common import load_dataset

    for n, folder in enumerate(["", "siteA", "siteB/day2"]):  # `**` matched one level only
        for kind in ("imgs", "masks"):
            (tmp_path / kind / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "imgs" / folder / f"f{n}.png")
        Image.fromarray(np.full((4, 6), 255, np.uint8)).save(tmp_path / "masks" / folder / f"f{n}_m.png")
    args = train_args("--dataset", "files", "--num-classes", "2", "--label-map", "0:0,255:1",
                      "--images", str(tmp_path / "imgs" / "**" / "*.png"),
                      "--masks", str(tmp_path / "masks" / "**" / "*.png"))
    dataset, _, _ = load_dataset(args, "train")
    assert "--dataset files: 3 image and label pairs." in capsys.readouterr().out
    assert [int(mask.max()) for _, mask in dataset.as_numpy_iterator()] == [1, 1, 1]


@pytest.mark.parametrize("value, message", [
    ("0:0;255:1", "'0:0;255:1' is not STORED:CLASS pairs separated by commas, e.g. 0:0,255:1"),
    ("0:0,0:1", "'0:0,0:1' gives a stored value twice"),
])
def test_bad_label_maps_are_usage_errors(capsys, value, message):
    with pytest.raises(SystemExit) as stopped:
        train_args("--label-map", value)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_a_label_map_is_for_files_only():
    from alignseg_keras.cli.common import load_dataset

    with pytest.raises(ValueError, match="--label-map is for --dataset files; --dataset "
                                         "synthetic has its own classes"):
        load_dataset(train_args("--label-map", "0:0,255:1"), "train")


def test_a_run_that_fails_before_writing_removes_the_folders_it_made(tmp_path):
    # A wrong data path left runs/<name>/ holding only the writer's lock file.
    from alignseg_keras.cli import train

    output = tmp_path / "runs" / "new"
    args = train_args("--dataset", "files", "--num-classes", "3", "--images",
                      str(tmp_path / "missing" / "*.jpg"), "--masks",
                      str(tmp_path / "missing" / "*.png"), "--output-dir", str(output), *TINY)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        train.run(args)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    # A folder that was there before stays, as do the folders above it.
    output.mkdir(parents=True)
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        train.run(args)
    assert output.is_dir() and (tmp_path / "runs" / "notes.txt").exists()


def test_refused_job_options_leave_no_folder_behind(tmp_path):
    # The job was joined after the output folder was made, outside the removal's reach.
    from alignseg_keras.cli import train

    output = tmp_path / "runs" / "new"
    args = train_args("--num-processes", "2", "--process-id", "0", "--output-dir", str(output), *TINY)
    with pytest.raises(ValueError, match=r"--num-processes, --process-id need\(s\) --distribute "
                                         "data_parallel"):
        train.run(args)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    incomplete = train_args("--distribute", "data_parallel", "--num-processes", "2", "--process-id",
                            "0", "--output-dir", str(output), *TINY)  # no coordinator address
    expected = "coordinator" if keras.backend.backend() == "jax" else "runs on the JAX backend"
    with pytest.raises(ValueError, match=expected):
        train.run(incomplete)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_files_that_differ_from_the_pattern_in_case_only_are_named(tmp_path, capsys):
    # `*.jpg` left the camera's `.JPG` files out; the error named the label files only.
    from PIL import Image

    from alignseg_keras.cli.common import file_pairs

    for name in ("a.JPG", "b.jpg"):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / name, format="JPEG")
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / f"{name[0]}_m.png")

    def pairs(images):
        return file_pairs(train_args("--dataset", "files", "--images", str(tmp_path / images),
                                     "--masks", str(tmp_path / "*_m.png")))

    with pytest.raises(ValueError, match="a_m.png"):
        pairs("*.jpg")
    hint = (r"1 file\(s\) differ from it in case only \(.*a.JPG\): patterns are case-sensitive; "
            r"'.*/\*.\[jJ\]\[pP\]\[gG\]' takes both.")
    assert re.search(rf"--images '.*\*.jpg' leaves out files: {hint}", capsys.readouterr().err)
    with pytest.raises(FileNotFoundError, match=r"'.*\*.jpeg' matches no file.$"):
        pairs("*.jpeg")
    (tmp_path / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"'.*\*.jpg' matches no file. {hint}"):
        pairs("*.jpg")
    (tmp_path / "b_m.png").unlink()
    images, masks = pairs("*.[jJ][pP][gG]")
    assert [os.path.basename(path) for path in images + masks] == ["a.JPG", "a_m.png"]
    # A folder in another case: the pattern suggested takes every letter in either case.
    (tmp_path / "Shots").mkdir()
    (tmp_path / "a.JPG").rename(tmp_path / "Shots" / "a.JPG")
    with pytest.raises(FileNotFoundError, match=r"'.*/\[sS\]\[hH\]\[oO\]\[tT\]\[sS\]/"
                                                r"\*.\[jJ\]\[pP\]\[gG\]' takes both"):
        pairs("shots/*.jpg")


@pytest.mark.parametrize("pattern, name, matches", [
    ("img_[0-9]*.png", "IMG_3.PNG", True), ("[!a]x.jpg", "AX.JPG", False),
    ("[!a]x.jpg", "BX.JPG", True), ("[]a]b", "]B", True), ("[]a]b", "AB", True),
    ("[[]x].jpg", "[X].JPG", True), ("straße.png", "STRAßE.PNG", True),
])
def test_patterns_in_any_case_match_as_fnmatch_ignoring_case(pattern, name, matches):
    import fnmatch

    from alignseg_keras.cli.common import _any_case

    assert fnmatch.fnmatchcase(name, _any_case(pattern)) is matches
    assert fnmatch.fnmatchcase(name.lower(), _any_case(pattern)) is fnmatch.fnmatchcase(
        name.lower(), pattern.lower())


def test_the_files_listed_once_are_those_loaded(tmp_path, monkeypatch):
    # train listed --dataset files twice (trained on and recorded): files added between
    # the two were recorded but not trained on.
    import glob

    from PIL import Image

    from alignseg_keras.cli.common import load_dataset

    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.ones((4, 6), np.uint8)).save(tmp_path / "a_m.png")
    monkeypatch.setattr(glob, "glob", lambda *a, **k: pytest.fail("listed again"))
    args = train_args("--dataset", "files", "--num-classes", "2", "--images", "unused",
                      "--masks", "unused")
    dataset, _, _ = load_dataset(args, "train", pairs=([str(tmp_path / "a.png")],
                                                       [str(tmp_path / "a_m.png")]))
    assert [int(mask.max()) for _, mask in dataset.as_numpy_iterator()] == [1]


def test_a_batch_that_does_not_split_over_the_mirrored_replicas_is_refused(monkeypatch):
    # TensorFlow failed inside the first step (AddN's shapes, or the synchronized
    # BatchNorm's all-reduce); the JAX path refused it already.
    import tensorflow as tf

    from alignseg_keras.cli.train import _strategy

    class TwoReplicas:
        num_replicas_in_sync = 2

    monkeypatch.setattr(tf.distribute, "MirroredStrategy", TwoReplicas)
    with pytest.raises(ValueError, match=r"--batch-size 3 must be a multiple of the 2 replicas "
                                         r"of --distribute mirrored"):
        _strategy("mirrored", 3)
    assert isinstance(_strategy("mirrored", 4), TwoReplicas)
