"""Arguments, defaults, model and dataset loading shared by the subcommands.

The defaults of the command line are read from the library (function
signatures and module constants), never restated here: `alignseg train
--help` shows the values `AlignSeg.compile`, `training_pipeline`,
`OhemCrossEntropy` and the inference functions use.
"""

import contextlib
import glob
import inspect
import os
import zipfile

DATASETS = ("synthetic", "cityscapes", "ade20k", "files")


def signature_defaults(function):
    """The default values of the keyword arguments of `function` (or a class), by name.

    Example:
    ```python
    signature_defaults(AlignSeg.compile)["learning_rate"]  # 0.01
    ```
    """
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def add_model_arguments(parser, what):
    """--model (a .keras file) or --preset (a preset name or directory), one required."""
    from alignseg_keras.models.presets import PRESETS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=f"a .keras file saved by alignseg (or a preset "
                        f"directory), to {what}")
    source.add_argument(
        "--preset", metavar="NAME_OR_DIR",
        help="a preset directory (written by save_to_preset or `alignseg convert`, with "
        f"its weights) or a preset name ({', '.join(sorted(PRESETS))}: an architecture "
        "without trained weights)",
    )


def add_precision_argument(parser):
    """--precision float32|bfloat16 (predict, evaluate, export), default float32."""
    from alignseg_keras import inference

    parser.add_argument(
        "--precision", choices=inference.PRECISIONS, default=inference.PRECISIONS[0],
        help="arithmetic of the model: float32 (default), or bfloat16 (Keras' mixed_bfloat16: "
        "float32 weights and logits, bfloat16 arithmetic, BatchNorm folded into the "
        "convolutions: faster where the hardware has "
        "bfloat16 units, such as GPUs and CPUs with AMX or AVX512-BF16 (a warning says when "
        "this machine has none), slightly less accurate; see docs/inference.md)",
    )


def add_frozen_argument(parser):
    """--frozen (predict and evaluate, which also have --precision): the weights frozen
    into the graph as constants, in that precision."""
    parser.add_argument(
        "--frozen", action="store_true",
        help="freeze the weights into the TensorFlow graph as constants "
        "(alignseg_keras.frozen_inference): CPU inference up to 10%% faster at 512x512 and "
        "more on small images or tiles, after a one-off cost (about 20 s for AlignSeg-R101) "
        "and with about 2 GiB more memory (up to 3.5 GiB more at the peak); for many images. "
        "TensorFlow backend only",
    )


def with_precision(model, args):
    """`model` for inference in the `--precision` of `args` (`inference.inference_model`;
    as it is when the command has no --precision), frozen with `--frozen`
    (`frozen_inference.FrozenInferenceModel`)."""
    from alignseg_keras import inference

    precision = getattr(args, "precision", None)
    if getattr(args, "frozen", False):
        from alignseg_keras.frozen_inference import FrozenInferenceModel

        return FrozenInferenceModel(model, precision)
    return model if precision is None else inference.inference_model(model, precision)


def print_message(command, label, text):
    """Print `alignseg COMMAND: LABEL: TEXT` on stderr, as the command line's warnings,
    notes and errors read."""
    import sys

    print(f"alignseg {command}: {label}: {text}", file=sys.stderr)


def end_progress_line():
    """End the line a stopped Keras progress bar left open on stdout, so that the message
    after it starts on a line of its own.

    Keras' bar rewrites its line in place (it counts every POSIX system as a terminal,
    logs redirected to a file included) and ends it only at an epoch's last step: an error
    in the middle of an epoch, printed on stderr, started on the bar's line. After an
    epoch's end this adds an empty line."""
    import sys

    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # a closed pipe or a full disk: the error at hand matters
        pass


def warn_about_precision(command, precision):
    """Print on stderr why `precision` will not be faster than float32 on this machine
    (`hardware.warn_once`), if it will not and nothing has said so yet; the reason, or None."""
    from alignseg_keras.hardware import warn_once

    return warn_once(precision, lambda reason: print_message(command, "warning", reason))


def print_kernel_note(command, kind):
    """Print on stderr what the backend's CPU kernels cost ("inference": a warning) or what
    others could save ("training": a note) on this machine (`hardware.kernel_note`), if
    anything; the sentence, or None."""
    from alignseg_keras.hardware import kernel_note

    note = kernel_note(kind)
    if note:
        print_message(command, "warning" if kind == "inference" else "note", note)
    return note


def load_saved_model(path):
    """The model saved at `path`: a .keras file, or a preset directory (written by
    `alignseg convert` or `save_to_preset`; Keras' `load_model` reads one as its
    bare backbone)."""
    import keras

    from alignseg_keras import AlignSeg
    from alignseg_keras.models.image_segmenter import ImageSegmenter
    from alignseg_keras.models.preset_files import is_backbone_only_preset
    from alignseg_keras.models.preset_files import is_preset_directory

    if is_backbone_only_preset(path):
        raise ValueError(
            f"{path} is the preset of an AlignSegBackbone alone, without heads: this command "
            "needs a whole model (a .keras file, or a preset of AlignSeg.save_to_preset). "
            f"Train heads on it with `alignseg train --preset {path}`."
        )
    if is_preset_directory(path):
        return AlignSeg.from_preset(path)
    _check_model_path(path)
    try:
        model = keras.saving.load_model(path)
    except TypeError as error:  # Keras' "Could not locate class ..."
        raise ValueError(f"{path} could not be rebuilt: {error}") from error
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path} cannot be read as a .keras file ({error}); it is damaged or "
                         "another kind of file.") from error
    if not isinstance(model, ImageSegmenter):
        raise ValueError(f"{path} holds a {type(model).__name__}, not an AlignSeg: the "
                         "command line predicts, evaluates and exports AlignSeg models.")
    return model


def _check_model_path(path):
    """Raises a `ValueError` saying what `path` is when it is no .keras file: a training
    folder, a SavedModel, another folder, an HDF5 file, a file that is no zip archive."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model.keras")):
            hint = f"a training folder: give its model, {os.path.join(path, 'model.keras')}"
        elif os.path.isfile(os.path.join(path, "saved_model.pb")):
            hint = ("a SavedModel (an export, for TF Serving): give the .keras file or the "
                    "preset directory it was exported from")
        else:
            hint = "a folder, neither a .keras file nor a preset directory (with config.json)"
        raise ValueError(f"{path} is {hint}.")
    if str(path).lower().endswith((".h5", ".hdf5")):
        raise ValueError(
            f"{path} is an HDF5 file: the command line reads .keras files and preset "
            "directories. Weights saved with `save_weights` load in Python into a model built "
            "with the same arguments (model.load_weights(path)); save it then with model.save "
            "to a .keras file."
        )
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable .keras file: a .keras file is a zip "
                         "archive and this one is not (cut short, or another kind of file).")


def load_model(args, num_classes=None):
    """The model of `--model` or `--preset`, in the `--precision` of `args` if it has one.

    `num_classes` sets the classes of a named preset (a preset directory keeps
    its own; a .keras file has its own).
    """
    from alignseg_keras import AlignSeg
    from alignseg_keras.checks import check_finite_weights
    from alignseg_keras.cli import INFERENCE_ONLY_SUBCOMMANDS
    from alignseg_keras.models.preset_files import is_preset_directory
    from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES

    if getattr(args, "frozen", False):
        from alignseg_keras.frozen_inference import check_tensorflow_backend

        check_tensorflow_backend("--frozen", "leave out --frozen on this backend")  # before loading
    command = getattr(args, "command", "model")
    warn_about_precision(command, getattr(args, "precision", None))
    if command in INFERENCE_ONLY_SUBCOMMANDS:
        print_kernel_note(command, "inference")
    if args.model or is_preset_directory(args.preset):
        model = load_saved_model(args.model or args.preset)
    else:
        if command in INFERENCE_ONLY_SUBCOMMANDS:
            print_message(command, "warning", (
                f"the preset {args.preset} is an architecture without trained weights: its "
                "predictions are those of untrained heads. Give a trained model: --model "
                "FILE.keras, or --preset DIRECTORY (from alignseg convert or save_to_preset)."))
        model = AlignSeg.from_preset(  # --num-classes 0 is refused, not read as not given
            args.preset, num_classes=DEFAULT_NUM_CLASSES if num_classes is None else num_classes
        )
    if command in INFERENCE_ONLY_SUBCOMMANDS:  # NaN logits would be class 0 everywhere
        check_finite_weights(model, model_name(args))
    return steps_through_xla_on_jax(with_precision(model, args))


def jit_compile_setting(xla=False):
    """`compile`'s `jit_compile` for the command line (`--xla` is `xla`): on TensorFlow,
    graphs with XLA only when asked; on JAX always. Keras runs a JAX step as one
    program only through `jax.jit`; with `jit_compile=False` every operation is
    dispatched (and compiled) on its own."""
    import keras

    return bool(xla) or keras.backend.backend() == "jax"


def steps_through_xla_on_jax(model):
    """`model`, its predict and evaluate steps compiled as `jit_compile_setting` says.

    A .keras file keeps the `jit_compile` it was compiled with: False for a
    TensorFlow training without XLA (`alignseg train` without --xla), which on
    JAX would run every operation of a step on its own. Elsewhere, and for
    models compiled otherwise, the model is returned as it is.
    """
    if getattr(model, "compiled", False) and jit_compile_setting() and not model.jit_compile:
        model.jit_compile = True
    return model


def model_name(args):
    """How errors name the model: its file or its preset."""
    return args.model or f"the preset {args.preset}"


def add_dataset_arguments(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, default="synthetic",
                       help="which data to read (default: the embedded synthetic scenes)")
    group.add_argument("--data-dir", help="dataset root (Cityscapes or ADEChallengeData2016)")
    group.add_argument("--images", help="glob of image files, for --dataset files (quoted; "
                       "** for any depth of folders)")
    group.add_argument("--masks", help="glob of label PNGs, for --dataset files, each paired "
                       "with the image of its name (frame_1.png, frame_1_mask.png) and holding "
                       "a class id 0..N-1 per pixel, 255 for ignored pixels (else --label-map)")
    group.add_argument("--num-classes", type=int,
                       help="number of classes, for --dataset files")
    group.add_argument("--label-map", type=label_map_argument, metavar="STORED:CLASS,...",
                       help="for --dataset files: the class of each value stored in the label "
                       "files, values not listed ignored (255); binary masks stored as 0 and "
                       "255: 0:0,255:1")
    group.add_argument("--synthetic-images", type=int, default=400,
                       help="number of synthetic training scenes (default %(default)s); the "
                       "validation scenes (evaluate's, and the training pictures') are a "
                       "quarter as many, 8 at least, drawn with another seed")
    group.add_argument("--synthetic-size", type=int, nargs=2, default=(128, 256),
                       metavar=("HEIGHT", "WIDTH"), help="synthetic scene size")


def label_map_argument(text):
    """The dict `{stored value: class}` of --label-map's `STORED:CLASS,...` (argparse's
    `type`: a bad value is a usage error naming the option)."""
    import argparse

    try:
        pairs = [item.split(":") for item in text.split(",")]
        label_map = {int(stored): int(label) for stored, label in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not STORED:CLASS pairs separated by commas, e.g. 0:0,255:1") from None
    if len(label_map) < len(pairs):
        raise argparse.ArgumentTypeError(f"{text!r} gives a stored value twice")
    return label_map


def _sorted_glob(pattern, what):
    """The files `pattern` matches, sorted; those that differ from it in case only
    (`*.jpg` and `a.JPG`) are named: in the error when nothing matches, in a
    note on stderr when some files are left out."""
    import sys

    if not pattern:
        raise ValueError(f"--dataset files needs --{what} (a glob pattern).")
    paths = sorted(glob.glob(pattern, recursive=True))  # `**`: any depth, as a shell's globstar
    other_case = sorted(set(glob.glob(_any_case(pattern), recursive=True)) - set(paths))
    hint = ""
    if other_case:
        # The pattern of the extension's case where that takes them, else of every letter's.
        suggested = _any_case_suffix(pattern)
        if not set(other_case) <= set(glob.glob(suggested, recursive=True)):
            suggested = _any_case(pattern)
        hint = (f"{len(other_case)} file(s) differ from it in case only ({_few(other_case)}): "
                f"patterns are case-sensitive; {suggested!r} takes both.")
    if not paths:
        raise FileNotFoundError(f"--{what} {pattern!r} matches no file. {hint}".rstrip())
    if hint:
        print(f"--{what} {pattern!r} leaves out files: {hint}", file=sys.stderr, flush=True)
    return paths


def _any_case(pattern):
    """`pattern` with each letter matching either case (`a.jpg` -> `[aA].[jJ][pP][gG]`;
    a bracket `[a-c]` -> `[a-cA-C]`, `[!a]` -> `[!aA]`)."""
    result, index = [], 0
    while index < len(pattern):
        character = pattern[index]
        if character == "[":
            start = index + 1 + (pattern[index + 1:index + 2] == "!")
            end = pattern.find("]", start + 1)  # a "]" first in the bracket is one of it
            if end != -1:
                body = pattern[start:end]
                other = _other_case(body).lstrip("]")  # a "]" closes it anywhere else
                result.append(pattern[index:start] + body + other + "]")
                index = end + 1
                continue
        other = _other_case(character)
        result.append(f"[{character}{other}]" if other != character else character)
        index += 1
    return "".join(result)


def _other_case(text):
    """`text` with each letter in the other case (letters without a one-letter other
    case, such as "ß", as they are)."""
    return "".join(c.swapcase() if len(c.swapcase()) == 1 else c for c in text)


def _any_case_suffix(pattern):
    """`pattern` with its last component's letters in either case (the extension,
    usually: `imgs/*.jpg` -> `imgs/*.[jJ][pP][gG]`)."""
    folder, name = os.path.split(pattern)
    return os.path.join(folder, _any_case(name))


def _few(paths):
    return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")


def load_dataset(args, split, training=False, pairs=None):
    """Returns `(dataset, num_classes, class_names)` for `split` ("train" or "val").

    `pairs`: for --dataset files, the `(images, masks)` of `file_pairs(args)` where
    the caller listed them already (to record what it trains on).

    For `training` the files come as an endless stream of passes, each in a
    permutation of the whole list drawn from `args.seed` and the pass number (the
    same in every iterator and every process of a job), as the authors'
    DataLoader(shuffle=True) and DistributedSampler permute: Cityscapes' files
    are sorted by city, and `training_pipeline`'s 64-example buffer alone left
    about a quarter of the batches of 8 from one city and walked the cities in
    alphabetical order every epoch.
    """
    from alignseg_keras import data
    from alignseg_keras.checks import check_class_count

    order = dict(shuffle_files=training, repeat=training, seed=args.seed if training else None)
    for option, value in (("--num-classes", args.num_classes), ("--label-map", args.label_map)):
        if value is not None and args.dataset != "files":
            raise ValueError(f"{option} is for --dataset files; --dataset {args.dataset} has "
                             "its own classes.")
    if args.dataset == "synthetic":
        seed = 0 if split == "train" else 1
        count = args.synthetic_images if split == "train" else max(args.synthetic_images // 4, 8)
        dataset = data.synthetic_scenes(count, image_size=tuple(args.synthetic_size), seed=seed)
        return dataset, len(data.SYNTHETIC_CLASSES), list(data.SYNTHETIC_CLASSES)
    if args.dataset in ("cityscapes", "ade20k") and not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir.")
    if args.dataset == "cityscapes":
        data.check_file_headers(*data.cityscapes_files(args.data_dir, split))
        dataset = data.load_cityscapes(args.data_dir, split=split, **order)
        return dataset, len(data.CITYSCAPES_CLASSES), list(data.CITYSCAPES_CLASSES)
    if args.dataset == "ade20k":
        ade_split = "training" if split == "train" else "validation"
        data.check_file_headers(*data.ade20k_files(args.data_dir, ade_split))
        dataset = data.load_ade20k(args.data_dir, split=ade_split, **order)
        return dataset, data.ADE20K_NUM_CLASSES, list(data.ADE20K_CLASSES)
    if args.num_classes is None:
        raise ValueError("--dataset files needs --num-classes.")
    check_class_count(args.num_classes)
    images, masks = pairs or file_pairs(args)
    print(f"--dataset files: {len(images)} image and label pairs.", flush=True)
    data.check_file_headers(images, masks)  # a bad file stopped a long run when it came
    dataset = data.from_files(images, masks, num_classes=args.num_classes,
                              label_map=args.label_map, **order)
    return dataset, args.num_classes, [str(i) for i in range(args.num_classes)]


def file_pairs(args):
    """The `(images, masks)` path lists of --images and --masks, paired by name
    (`data.pair_by_name`), as --dataset files reads them."""
    from alignseg_keras import data

    images = _sorted_glob(args.images, "images")
    return images, data.pair_by_name(images, _sorted_glob(args.masks, "masks"))


def add_test_time_arguments(parser):
    """--sliding, --overlap, --scales, --flip and --batch-size (predict and evaluate),
    with the defaults of `alignseg_keras.inference`."""
    from alignseg_keras import inference

    sliding = signature_defaults(inference.predict_sliding)
    group = parser.add_argument_group("test-time procedure")
    group.add_argument("--sliding", type=int, nargs="+", metavar="TILE",
                       help="sliding-window tile size (one value, or height and width)")
    group.add_argument("--overlap", type=float, default=sliding["overlap"],
                       help=f"sliding-window overlap (default {sliding['overlap']:.4g})")
    group.add_argument("--scales", type=float, nargs="+",
                       help="multi-scale test scales (the paper's: "
                       f"{' '.join(map(str, inference.PAPER_SCALES))})")
    group.add_argument("--flip", action="store_true", help="average with the flipped image")
    group.add_argument("--batch-size", type=int, default=sliding["batch_size"],
                       help=f"images or tiles per forward pass (default {sliding['batch_size']})")


def sliding_tile(args):
    """The tile of --sliding: None, one size or `(height, width)`; more values, or
    sizes below 1, are a `ValueError` (predict and evaluate check it before loading
    the model)."""
    if not args.sliding:
        return None
    if len(args.sliding) > 2:
        raise ValueError("--sliding takes one tile size or two (height and width); "
                         f"received {len(args.sliding)}: {' '.join(map(str, args.sliding))}.")
    from alignseg_keras import inference

    tile = args.sliding[0] if len(args.sliding) == 1 else tuple(args.sliding)
    try:
        inference.check_tile_size(tile)  # the library's rule, in the option's words
    except ValueError:
        raise ValueError("--sliding takes tile sizes of 1 pixel or more; received "
                         f"{' '.join(map(str, args.sliding))}.") from None
    return tile


def check_test_time_arguments(args):
    """Raises the `ValueError` of a bad --sliding, --overlap, --scales or --batch-size,
    naming the option (predict and evaluate call it before loading the model; the
    library's functions would refuse the value only at the first image)."""
    from alignseg_keras import inference
    from alignseg_keras.checks import check_positive_int

    sliding_tile(args)
    try:
        inference.window_starts(1, 1, args.overlap)  # the library's rule for the overlap
    except ValueError as error:
        raise ValueError(f"--overlap: {error}") from None
    try:
        if args.scales:
            inference.check_scales(args.scales)  # the library's rule, in the option's words
    except ValueError:
        raise ValueError("--scales must be positive finite numbers; received "
                         f"{' '.join(map(str, args.scales))}.") from None
    check_positive_int(args.batch_size, "--batch-size")


def predict_probabilities(model, image, args):
    """Probabilities for one image with the test-time procedure the arguments ask for."""
    from alignseg_keras import inference

    tile = sliding_tile(args)
    if args.scales or args.flip:
        return inference.predict_multiscale(
            model, image, scales=args.scales or (1.0,), flip=args.flip, sliding=tile,
            overlap=args.overlap, batch_size=args.batch_size,
        )
    if tile is not None:
        return inference.predict_sliding(
            model, image, tile_size=tile, overlap=args.overlap, batch_size=args.batch_size
        )
    return inference.predict_whole(model, image, batch_size=args.batch_size)


def prepare_output_dir(path, option):
    """Creates the folder `path` if needed and checks that files can be written in it.

    Raises a `ValueError` naming `option` and `path` when `path` is an existing
    file, or when the folder cannot be created or written (read-only place,
    no permission, a parent that is a file).
    """
    import os
    import tempfile

    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} is a file, not a folder; give a folder (created "
                         "if needed).")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"{option} {path} cannot be written: {reason}. Choose a folder you "
                         "can write to.") from None
    return path


def prepare_whole_folder(path, option, check, hint=""):
    """Checks a folder written elsewhere and renamed into place, before the work.

    `check(path)` raises the writer's `ValueError` (a file, a folder holding other
    files); it is raised naming `option`, with `hint` after it. The folder itself
    is not created (it appears complete or not at all); its parent must be writable.
    """
    import os

    try:
        check(path)
    except ValueError as error:
        raise ValueError(f"{option} {error}{hint}") from None
    prepare_output_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {option}")
    return path


def prepare_output_file(path, option):
    """Checks that the file `path` can be written: its folder is writable, it is not a folder."""
    import os

    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name.")
    prepare_output_dir(os.path.dirname(path) or ".", f"the folder of {option}")
    return path


def missing_folders(path):
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty_folders(folders):
    """Removes the folders (deepest first) that are empty, stopping at the first that is not."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


@contextlib.contextmanager
def new_folders_removed_if_empty(path):
    """Removes, when the block ends, the folders of `path` it made that are still empty
    (a command that failed before writing its output leaves no empty folders)."""
    new_folders = missing_folders(path)
    try:
        yield
    finally:
        remove_empty_folders(new_folders)
