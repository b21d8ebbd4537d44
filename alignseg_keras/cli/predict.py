"""`alignseg predict`: label pictures, overlays and offset fields for image files.

For every image `DIR/NAME.png` it writes, into `--output`:

    NAME_color.png      the predicted labels in the palette's colors
    NAME_overlay.png    the colors blended over the image
    NAME_labelIds.png   with --label-ids: Cityscapes label ids (benchmark format)
    NAME_MODULE.png     with --offsets: the offset field of each alignment module

`--no-pictures` leaves out the first two: with `--label-ids` alone the folder then
holds one file per image, as the Cityscapes benchmark server and cityscapesScripts'
evaluation, which take every `CITY_SEQ_FRAME*.png` under the folder as the
prediction of that image, need.

Pictures are written atomically (a temporary file, then a rename), so runs
writing into the same folder at the same time never leave a torn PNG.

An image that cannot be read, has more than --max-pixels pixels (checked before
it is decoded) or fails to predict is reported on stderr with its name and
skipped; the others are predicted, and the exit code is then 1.
"""

import argparse
import os
import pathlib
import sys

from alignseg_keras.cli.common import add_frozen_argument
from alignseg_keras.cli.common import add_model_arguments
from alignseg_keras.cli.common import add_precision_argument
from alignseg_keras.cli.common import add_test_time_arguments
from alignseg_keras.datasets_info import ADE20K_NUM_CLASSES
from alignseg_keras.datasets_info import CITYSCAPES_CLASSES
from alignseg_keras.image_files import MAX_PIXELS
from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES
from alignseg_keras.visualize import PALETTES

# Cityscapes' label ids (--label-ids) exist for a model of its 19 train ids.
CITYSCAPES_NUM_CLASSES = len(CITYSCAPES_CLASSES)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="predict label maps of image files and draw them",
        description="Predict image files with a .keras model or a preset and write color label "
        "pictures and overlays (and optionally Cityscapes labelIds PNGs and offset-field "
        "pictures). Without --sliding/--scales/--flip each image is predicted whole; "
        "--sliding 769 --scales 0.75 1.0 1.25 1.5 1.75 --flip is the paper's test.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG)")
    add_model_arguments(parser, "predict with")
    parser.add_argument("--num-classes", type=int,
                        help="classes of a named --preset (default "
                        f"{DEFAULT_NUM_CLASSES}); a preset directory or .keras file has its own")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--palette", choices=PALETTES, default="auto",
                        help=f"label colors; auto: Cityscapes for {CITYSCAPES_NUM_CLASSES} "
                        f"classes, ADE20K for {ADE20K_NUM_CLASSES}, else generated "
                        "(default auto)")
    parser.add_argument("--label-ids", action="store_true",
                        help="also write Cityscapes labelIds PNGs "
                        f"({CITYSCAPES_NUM_CLASSES}-class models)")
    parser.add_argument("--offsets", action="store_true",
                        help="also draw the offset fields of every AlignFA/AlignCM module")
    parser.add_argument("--pictures", action=argparse.BooleanOptionalAction, default=True,
                        help="write the color pictures and overlays (default); "
                        "--no-pictures --label-ids writes a folder of labelIds PNGs only, "
                        "one per image, as the Cityscapes benchmark takes them")
    add_test_time_arguments(parser)
    add_precision_argument(parser)
    add_frozen_argument(parser)
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="opacity of the labels in the overlay (default 0.5)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="refuse images with more pixels, before decoding them "
                        f"(default {MAX_PIXELS:,}; 0: no limit)")
    parser.set_defaults(func=run)


def output_names(paths):
    """File stems of `paths`, which name the outputs; two files of equal stems are an
    error (one file named twice, by overlapping globs, is predicted once)."""
    stems = {}
    for path in paths:
        stem = pathlib.Path(path).stem
        if stem in stems and os.path.realpath(stems[stem]) == os.path.realpath(path):
            continue
        if stem in stems:
            raise ValueError(
                f"{stems[stem]} and {path} have the same name {stem!r}; their pictures "
                "would overwrite each other. Predict them into different --output folders."
            )
        stems[stem] = path
    return {path: stem for stem, path in stems.items()}


def picture_suffixes(model, args):
    """The suffixes of the pictures written for each image (`NAME_SUFFIX.png`)."""
    suffixes = ["color", "overlay"] if args.pictures else []
    suffixes += ["labelIds"] if args.label_ids else []
    return suffixes + (list(model.backbone.offset_modules) if args.offsets else [])


def check_inputs_kept(stems, output, suffixes):
    """Raises a `ValueError` when a picture to write would replace one of the input images
    (`--output` their own folder, with an earlier run's pictures among the inputs, say)."""
    inputs = {pathlib.Path(path).resolve(): path for path in stems}
    for path, stem in stems.items():
        for suffix in suffixes:
            picture = pathlib.Path(output) / f"{stem}_{suffix}.png"
            if picture.resolve() in inputs:
                raise ValueError(
                    f"The {suffix} picture of {path} would replace the input image "
                    f"{inputs[picture.resolve()]} (an earlier run's picture among the images?): "
                    "give another --output folder, or leave that image out. Nothing was written."
                )


def write_pictures(model, image, labels, palette, args, stem):
    """Writes the pictures of one image; returns their paths."""
    from alignseg_keras import visualize

    output = pathlib.Path(args.output)
    pictures = {}
    if args.pictures:  # predictions hold no ignore label: class 255 of a larger model is colored
        pictures["color"] = visualize.colorize_labels(labels, palette, ignore_index=None)
        pictures["overlay"] = visualize.overlay(image, labels, palette, alpha=args.alpha,
                                                ignore_index=None)
    if args.label_ids:
        pictures["labelIds"] = visualize.train_ids_to_label_ids(labels)
    if args.offsets:
        pictures.update(visualize.offset_images(model, image))
    paths = []
    for suffix, picture in pictures.items():
        path = output / f"{stem}_{suffix}.png"
        visualize.save_png(path, picture)
        paths.append(str(path))
    return paths


def predict_file(model, path, palette, args, stem):
    """Reads, predicts and draws one image file; returns the paths written."""
    from alignseg_keras.cli.common import predict_probabilities
    from alignseg_keras.image_files import read_image

    image = read_image(path, max_pixels=args.max_pixels)
    labels = predict_probabilities(model, image, args).argmax(-1)
    return write_pictures(model, image, labels, palette, args, stem)


def _per_image_errors():
    """The errors of one image that the others may not have: a bad file or value, memory,
    and the backend's runtime errors (out of GPU memory on a large image: TensorFlow's
    `OpError`, JAX's and torch's `RuntimeError`). Others (a programming error) stop
    the run with their traceback."""
    errors = (ValueError, OSError, MemoryError, RuntimeError)
    try:
        import tensorflow as tf
    except ImportError:  # a JAX or torch install without TensorFlow
        return errors
    return (*errors, tf.errors.OpError)


def _failure(error):
    """What failed, in a line: the message of ours (ValueError, OSError), else the
    error's kind and the first line of the backend's message (an out-of-memory)."""
    if isinstance(error, (ValueError, OSError)):
        return str(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def run(args):
    from alignseg_keras.cli.common import load_model
    from alignseg_keras.cli.common import model_name
    from alignseg_keras.cli.common import prepare_output_dir
    from alignseg_keras.cli.common import print_message
    from alignseg_keras.cli.common import check_test_time_arguments
    from alignseg_keras.models.preset_files import is_preset_directory
    from alignseg_keras.visualize import get_palette

    check_test_time_arguments(args)  # before the model is loaded
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1]; received {args.alpha}.")
    if args.max_pixels < 0:
        raise ValueError(f"--max-pixels must be 0 (no limit) or more; received {args.max_pixels}.")
    if args.num_classes is not None and (args.model or is_preset_directory(args.preset)):
        raise ValueError(
            "--num-classes sets the classes of a named --preset; "
            f"{model_name(args)} has its own."
        )
    if not (args.pictures or args.label_ids or args.offsets):
        raise ValueError("--no-pictures leaves nothing to write without --label-ids or "
                         "--offsets.")
    if args.offsets and args.frozen:
        raise ValueError("--offsets draws the offset fields from the Keras model's layers, which "
                         "a --frozen model does not have; leave out one of the two.")
    if args.label_ids and args.offsets and not args.pictures:
        print_message("predict", "note", "--offsets writes NAME_<module>.png beside the label "
                      "ids: the Cityscapes scripts take every CITY_SEQ_FRAME*.png in the "
                      "folder as a prediction; draw the offsets into another --output.")
    stems = output_names(args.images)
    prepare_output_dir(args.output, "--output")
    model = load_model(args, args.num_classes)
    # Only the pictures are colored: --no-pictures needs no palette for the model's classes.
    palette = get_palette(args.palette, model.num_classes) if args.pictures else None
    if args.label_ids and model.num_classes != CITYSCAPES_NUM_CLASSES:
        raise ValueError(
            "--label-ids writes Cityscapes label ids and needs a "
            f"{CITYSCAPES_NUM_CLASSES}-class model; {model_name(args)} predicts "
            f"{model.num_classes} classes."
        )
    check_inputs_kept(stems, args.output, picture_suffixes(model, args))
    failures = 0
    for path in stems:  # each file once
        try:
            written = predict_file(model, path, palette, args, stems[path])
        except _per_image_errors() as error:
            print(f"alignseg predict: skipping {path}: {_failure(error)}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}: wrote {', '.join(written)}")
    if failures:
        print(f"alignseg predict: {failures} of {len(stems)} images failed.",
              file=sys.stderr)
    return 1 if failures else 0
