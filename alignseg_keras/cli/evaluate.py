"""`alignseg evaluate`: per-class IoU and Boundary IoU, mean Dice and mIoU of a saved model."""

import numpy as np


def add_parser(subparsers):
    from alignseg_keras.cli.common import add_dataset_arguments
    from alignseg_keras.cli.common import add_frozen_argument
    from alignseg_keras.cli.common import add_model_arguments
    from alignseg_keras.cli.common import add_precision_argument
    from alignseg_keras.cli.common import add_test_time_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a saved model (per-class IoU and Boundary IoU, mean Dice, mIoU)",
        description="Evaluate a .keras model or a preset. Without --sliding/--scales/--flip each image is "
        "predicted whole; --sliding 769 --scales 0.75 1.0 1.25 1.5 1.75 --flip is the paper's "
        "multi-scale test. Prints per-class IoU and Boundary IoU (band width 2% of the image "
        "diagonal), then pixel accuracy, mean Dice, boundary mIoU and, last, the mIoU.",
    )
    add_model_arguments(parser, "evaluate")
    add_dataset_arguments(parser)
    parser.add_argument("--split", default="val", choices=("train", "val"))
    add_test_time_arguments(parser)
    add_precision_argument(parser)
    add_frozen_argument(parser)
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.set_defaults(func=run)


def _score(value):
    return "   n/a" if np.isnan(value) else f"{value:6.4f}"


def format_table(
    class_names, ious, pixel_accuracy, miou, boundary_ious=None, mean_dice=None, boundary_miou=None
):
    """The evaluation table: per-class IoU (and Boundary IoU), summary lines, `mIoU: X` last.

    Args:
        class_names: one name per class.
        ious: per-class IoU, NaN for a class that never occurs ("n/a").
        pixel_accuracy: float.
        miou: float, printed on the last line as `mIoU: X`.
        boundary_ious: optional per-class Boundary IoU: a second column.
        mean_dice: optional float, a "mean Dice" summary line.
        boundary_miou: optional float, a "boundary mIoU" summary line.

    Example:
    ```python
    print(format_table(["road", "car"], [0.9, float("nan")], 0.95, 0.9))
    ```
    """
    width = max(len("class"), len("pixel accuracy"), *(len(name) for name in class_names))
    header, rule = f"{'class':<{width}}  IoU   ", f"{'-' * width}  ------"
    if boundary_ious is not None:
        if len(boundary_ious) != len(class_names):
            raise ValueError(
                f"format_table: {len(boundary_ious)} boundary IoUs for {len(class_names)} classes."
            )
        header, rule = header + "  bIoU", rule + "  ------"
    lines = [header.rstrip(), rule]
    for index, (name, iou) in enumerate(zip(class_names, ious)):
        row = f"{name:<{width}}  {_score(iou)}"
        if boundary_ious is not None:
            row += f"  {_score(boundary_ious[index])}"
        lines.append(row)
    lines.append(rule)
    lines.append(f"{'pixel accuracy':<{width}}  {pixel_accuracy:6.4f}")
    if mean_dice is not None:
        lines.append(f"{'mean Dice':<{width}}  {_score(mean_dice)}")
    if boundary_miou is not None:
        lines.append(f"{'boundary mIoU':<{width}}  {_score(boundary_miou)}")
    lines.append(f"mIoU: {miou:.4f}")
    return "\n".join(lines)


def run(args):
    from alignseg_keras.cli.common import load_dataset
    from alignseg_keras.cli.common import load_model
    from alignseg_keras.cli.common import model_name
    from alignseg_keras.cli.common import predict_probabilities
    from alignseg_keras.cli.common import check_test_time_arguments
    from alignseg_keras.metrics import BoundaryIoU
    from alignseg_keras.metrics import MeanIoU
    from alignseg_keras.metrics import dice_from_confusion

    from alignseg_keras.models.preset_files import is_preset_directory
    from alignseg_keras.models.tf_data_checks import data_errors_as_value_errors

    check_test_time_arguments(args)  # before the model is loaded
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1 (images to evaluate); received {args.limit}.")
    # A file or preset directory is read first (a missing one fails fast); a preset
    # name is built with the data's classes.
    named_preset = args.preset and not is_preset_directory(args.preset)
    model = None if named_preset else load_model(args)
    dataset, num_classes, class_names = load_dataset(args, args.split)
    if model is None:
        model = load_model(args, num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(
            f"The model of {model_name(args)} predicts {model.num_classes} classes but the "
            f"{args.dataset} data has {num_classes}."
        )
    if args.limit is not None:
        dataset = dataset.take(args.limit)
    metric = MeanIoU(num_classes)
    boundary = BoundaryIoU(num_classes)  # band: 2% of each image's diagonal
    with data_errors_as_value_errors():  # a bad file: its message, not TensorFlow's
        for image, mask in dataset.as_numpy_iterator():
            probabilities = predict_probabilities(model, image, args)
            predictions = probabilities.argmax(-1)[None]
            metric.update_state(mask[None], predictions)
            boundary.update_state(mask[None], predictions)
    if not metric.counted_pixels():
        raise ValueError(
            f"No labelled pixel to score in the {args.split} split: every label pixel is the "
            "ignore label 255. Check the label files (and --label-map for --dataset files).")
    ious = metric.per_class_iou()
    boundary_ious = boundary.per_class_iou()
    dice = dice_from_confusion(metric.confusion_matrix(), metric.unclassified_pixels())
    print(
        format_table(
            class_names,
            ious,
            metric.pixel_accuracy(),
            _nanmean(ious),
            boundary_ious=boundary_ious,
            mean_dice=_nanmean(dice),
            boundary_miou=_nanmean(boundary_ious),
        )
    )
    return 0


def _nanmean(values):
    """The mean of the non-NaN values; NaN (printed "n/a") when there are none."""
    values = np.asarray(values, np.float64)
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")
