"""`alignseg convert`: the authors' PyTorch checkpoint to a Keras `.keras` model."""

import sys

from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES
from alignseg_keras.models.presets import OFFICIAL_PRESETS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert the authors' PyTorch checkpoint (.pth) to a .keras model",
        description="Convert a checkpoint of the authors' AlignSeg (speedinghzl/AlignSeg, "
        "e.g. their Cityscapes models) to a .keras file that `alignseg evaluate` and "
        "`keras.saving.load_model` read. Reading .pth files needs PyTorch "
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
    parser.add_argument("--output", required=True, help="the .keras file to write")
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
    from alignseg_keras.convert import encoder_architecture
    from alignseg_keras.convert import load_backbone_checkpoint
    from alignseg_keras.convert import load_official_checkpoint

    if not args.output.endswith(".keras"):
        raise ValueError(f"--output must be a .keras file; received {args.output!r}.")
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes must be positive; received {args.num_classes}.")
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
    model.save(args.output)
    print(
        f"Converted {args.checkpoint} ({encoder_architecture(model)}, {model.num_classes} classes, "
        f"{model.count_params():,} weights) to {args.output}"
    )
    return 0
