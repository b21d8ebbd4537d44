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

# The subcommands that only infer: run as a program (`program`), they let TensorFlow's
# oneDNN convolutions cache their kernels for the whole process (docs/inference.md).
INFERENCE_ONLY_SUBCOMMANDS = ("evaluate", "predict")


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
    # Quiets the TensorFlow that JAX and torch runs import later (tf.data); on
    # TensorFlow, importing alignseg_keras has loaded it already, and its C++ log
    # level is read once: set the variable in the shell to quiet its start-up lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        from alignseg_keras.cli.common import print_message

        _stop_pipelines(error)
        print_message(args.command, "error", error)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a word, not a traceback from wherever it landed
        from alignseg_keras.cli.common import print_message

        hint = ("; re-run the same command to resume from its last backup"
                if args.command == "train" else "")
        print_message(args.command, "error", f"interrupted{hint}.")
        return 130


def _stop_pipelines(error):
    """Frees the iterators a failed command left (held by the frames of `error`'s
    tracebacks, and of the errors it was raised from or during), which stops their
    pipelines' reading threads: they went on reading the next files and logging each
    one's error after the command's own message, which ended up 190 lines above the end
    of the output."""
    import gc

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
    gc.collect()


def program(argv=None):
    """The `alignseg` program: `main` in a process of its own.

    For the subcommands that only infer (`INFERENCE_ONLY_SUBCOMMANDS`) it first
    sets `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1` unless the environment sets it
    already (`=0` turns it off): TensorFlow's oneDNN convolutions then reorder each
    kernel once instead of at every call, 0-15% faster for 0.05-0.3 GiB more memory
    (docs/benchmarks.md). TensorFlow reads the variable once per process and it
    would make any later training use the first kernels, so `main`, which other
    processes call (tests, notebooks), never sets it.
    """
    from alignseg_keras.checks import ONEDNN_FROZEN_WEIGHTS_VARIABLE

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in INFERENCE_ONLY_SUBCOMMANDS:
        os.environ.setdefault(ONEDNN_FROZEN_WEIGHTS_VARIABLE, "1")
    return main(argv)


if __name__ == "__main__":
    sys.exit(program())
