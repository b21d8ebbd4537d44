"""`alignseg convert`: the authors' PyTorch checkpoint to a preset directory or a `.keras` file."""

import os
import sys

from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES
from alignseg_keras.models.presets import OFFICIAL_PRESETS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert the authors' PyTorch checkpoint (.pth) to a preset directory or a .keras "
        "model",
        description="Convert a checkpoint of the authors' AlignSeg (speedinghzl/AlignSeg, "
        "e.g. their Cityscapes models) to a preset directory (keras-hub's layout, for "
        "`AlignSeg.from_preset` and `--preset`) or, for an --output ending in .keras, a "
        ".keras file for `keras.saving.load_model` and `--model`. Reading .pth files needs PyTorch "
        "(pip install alignseg-keras[torch]); .npz files of the same tensors do not.",
    )
    parser.add_argument(
        "checkpoint", help="the authors' .pth checkpoint (or an .npz of its tensors)"
    )
    parser.add_argument(
        "--backbone-only", action="store_true",
        help="the checkpoint is an ImageNet deep-stem ResNet (e.g. resnet101-imagenet.pth, "
        "the authors' start): load it into the backbone of a new official model whose "
        "decoder is freshly initialised (fc is ignored)",
    )
    parser.add_argument(
        "--output", required=True,
        help="the preset directory to write (replaced if it holds a preset; an existing "
        "folder that holds anything else is refused), or a .keras file",
    )
    parser.add_argument(
        "--num-classes", type=int,
        help="classes of the converted model (default: the checkpoint's, or "
        f"{DEFAULT_NUM_CLASSES} with --backbone-only); a different number leaves the two 1x1 "
        "classifiers freshly initialised, for fine-tuning",
    )
    parser.add_argument(
        "--preset", choices=sorted(OFFICIAL_PRESETS.values()),
        help="the network to build (default: told from the checkpoint's ResNet depth)",
    )
    parser.set_defaults(func=run)


def run(args):
    from alignseg_keras.cli.common import new_folders_removed_if_empty

    # Folders made for --output go again when the conversion fails (a wrong checkpoint).
    with new_folders_removed_if_empty(os.path.dirname(os.path.abspath(args.output))):
        return _convert(args)


def _convert(args):
    from alignseg_keras.callbacks import save_model
    from alignseg_keras.checks import check_class_count
    from alignseg_keras.cli.common import prepare_output_file
    from alignseg_keras.convert import encoder_architecture
    from alignseg_keras.convert import load_backbone_checkpoint
    from alignseg_keras.convert import load_official_checkpoint
    from alignseg_keras.models.preset_files import check_preset_directory_name

    as_keras_file = args.output.endswith(".keras")
    if args.output.lower().endswith(".keras") and not as_keras_file:
        raise ValueError(f"--output {args.output!r}: a .keras file's name ends with .keras in "
                         "lower case (Keras reads no other); a preset directory's name has "
                         "no extension.")
    if as_keras_file:
        prepare_output_file(args.output, "--output")
    else:
        check_preset_directory_name(args.output, "--output", hint=", or a .keras file name")
        check_preset_output(args.output)
    if args.num_classes is not None:  # before reading the checkpoint
        try:
            check_class_count(args.num_classes)
        except ValueError as error:
            raise ValueError(f"--num-classes {args.num_classes}: {error}") from None
    try:
        if args.backbone_only:
            model = load_backbone_checkpoint(
                args.checkpoint, num_classes=args.num_classes or DEFAULT_NUM_CLASSES,
                preset=args.preset, verbose=True,
            )
        else:
            model = load_official_checkpoint(
                args.checkpoint, num_classes=args.num_classes, preset=args.preset, verbose=True
            )
    except ImportError as error:
        print(f"alignseg convert: error: {error}", file=sys.stderr)
        return 2
    if as_keras_file:
        save_model(model, args.output)
    else:
        model.save_to_preset(args.output, description=preset_description(args, model))
    what = "" if as_keras_file else "the preset directory "
    print(
        f"Converted {args.checkpoint} ({encoder_architecture(model)}, {model.num_classes} classes, "
        f"{model.count_params():,} weights) to {what}{args.output}"
    )
    return 0


def check_preset_output(path):
    """Refuses an --output that is a file, or a folder holding files besides a preset's
    (writing a preset replaces the folder), before the conversion's work."""
    from alignseg_keras.cli.common import prepare_whole_folder
    from alignseg_keras.models.preset_files import check_preset_directory

    prepare_whole_folder(path, "--output", check_preset_directory,
                         hint=" Or give a .keras file name.")


def preset_description(args, model):
    """The preset's description in its metadata.json: what it was converted from."""
    from alignseg_keras.convert import encoder_architecture

    part = "ImageNet backbone of " if args.backbone_only else ""
    return (f"Converted by `alignseg convert` from the authors' {part}checkpoint "
            f"{os.path.basename(args.checkpoint)} ({encoder_architecture(model)}, "
            f"{model.num_classes} classes).")
