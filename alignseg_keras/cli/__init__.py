"""The `alignseg` command line: train, evaluate, predict, export, convert and info.

Each subcommand lives in its own module with `add_parser(subparsers)`, which
registers its arguments and sets `func` to the function that runs it and
returns an exit code.
"""

import argparse
import importlib
import os
import sys

SUBCOMMANDS = ("train", "evaluate", "predict", "export", "convert", "info")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="alignseg",
        description="AlignSeg (Feature-Aligned Segmentation Networks) for Keras 3.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        module_name = f"alignseg_keras.cli.{name}"
        try:
            module = importlib.import_module(module_name)
            module.add_parser(subparsers)
        except ImportError as error:
            # Never a silently missing subcommand: say which one and why.
            raise ImportError(
                f"alignseg: the subcommand {name!r} ({module_name}) cannot be loaded: "
                f"{error}"
            ) from error
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"alignseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
