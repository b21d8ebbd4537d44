"""`alignseg evaluate`: per-class IoU and mIoU of a saved model on a dataset."""

import numpy as np


def add_parser(subparsers):
    from alignseg_keras.cli.common import add_dataset_arguments
    from alignseg_keras.cli.common import add_model_arguments
    from alignseg_keras.cli.common import add_test_time_arguments

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a saved model (per-class IoU and mIoU)",
        description="Evaluate a .keras model or a preset. Without --sliding/--scales/--flip each image is "
        "predicted whole; --sliding 769 --scales 0.75 1.0 1.25 1.5 1.75 --flip is the paper's "
        "multi-scale test.",
    )
    add_model_arguments(parser, "evaluate")
    add_dataset_arguments(parser)
    parser.add_argument("--split", default="val", choices=("train", "val"))
    add_test_time_arguments(parser)
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.set_defaults(func=run)


def format_table(class_names, ious, pixel_accuracy, miou):
    width = max(len("class"), *(len(name) for name in class_names))
    lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  ------"]
    for name, iou in zip(class_names, ious):
        lines.append(f"{name:<{width}}  {'   n/a' if np.isnan(iou) else f'{iou:6.4f}'}")
    lines.append(f"{'-' * width}  ------")
    lines.append(f"{'pixel accuracy':<{width}}  {pixel_accuracy:6.4f}")
    lines.append(f"mIoU: {miou:.4f}")
    return "\n".join(lines)


def run(args):
    from alignseg_keras.cli.common import load_dataset
    from alignseg_keras.cli.common import load_model
    from alignseg_keras.cli.common import model_name
    from alignseg_keras.cli.common import predict_probabilities
    from alignseg_keras.metrics import MeanIoU

    from alignseg_keras.models.preset_files import is_preset_directory

    # A file or preset directory is read first (a missing one fails fast); a preset
    # name is built with the data's classes.
    named_preset = args.preset and not is_preset_directory(args.preset)
    model = None if named_preset else load_model(args)
    dataset, num_classes, class_names = load_dataset(args, args.split)
    if model is None:
        model = load_model(args, num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(
            f"The model {model_name(args)} predicts {model.num_classes} classes but the "
            f"{args.dataset} data has {num_classes}."
        )
    if args.limit:
        dataset = dataset.take(args.limit)
    metric = MeanIoU(num_classes)
    for image, mask in dataset.as_numpy_iterator():
        probabilities = predict_probabilities(model, image, args)
        metric.update_state(mask[None], probabilities.argmax(-1)[None])
    ious = metric.per_class_iou()
    print(format_table(class_names, ious, metric.pixel_accuracy(), float(np.nanmean(ious))))
    return 0
