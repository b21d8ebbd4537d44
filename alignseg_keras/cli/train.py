"""`alignseg train`: the paper's training recipe from the command line."""

import errno
import math
import os
import sys

PIPELINE_DEFAULTS_HELP = ("that of alignseg_keras.data.training_pipeline (docs/training.md "
                          "gives it and its source)")
# Options whose defaults are training_pipeline's arguments of the same name.
PIPELINE_OPTIONS = ("crop_size", "scale_range", "batch_size")
PRECISIONS = {"float32": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def add_parser(subparsers):
    from alignseg_keras import AlignSeg
    from alignseg_keras.cli.common import add_dataset_arguments
    from alignseg_keras.cli.common import signature_defaults
    from alignseg_keras.layers.alignment import ALIGNMENT_MODES
    from alignseg_keras.losses import LOSS_NAMES
    from alignseg_keras.losses import FocalLoss
    from alignseg_keras.losses import OhemCrossEntropy
    from alignseg_keras.models.alignseg import DECODER_DEFAULTS
    from alignseg_keras.models.presets import DEFAULT_ENCODER
    from alignseg_keras.models.presets import PRESETS
    from alignseg_keras.optimizers import CITYSCAPES_STEPS

    compile_defaults = signature_defaults(AlignSeg.compile)
    ohem = signature_defaults(OhemCrossEntropy)
    focal = signature_defaults(FocalLoss)
    parser = subparsers.add_parser(
        "train",
        help="train AlignSeg",
        description="Train AlignSeg with SGD, poly LR, deep supervision and optional OHEM. "
        "Re-running the same command with the same --output-dir resumes after a crash or kill.",
    )
    add_dataset_arguments(parser)
    model = parser.add_argument_group(
        "model (options left out keep the preset's, or AlignSeg's defaults)"
    )
    model.add_argument(
        "--preset", metavar="NAME_OR_DIR",
        help="start from a preset: a name (" + ", ".join(sorted(PRESETS)) + ") or a preset "
        "directory with its weights (save_to_preset, `alignseg convert`); a directory with "
        "other classes than the data keeps every weight but the heads'",
    )
    model.add_argument("--backbone", help=f"encoder name (default {DEFAULT_ENCODER})")
    model.add_argument("--backbone-weights", choices=("imagenet",), default=None)
    model.add_argument("--decoder-channels", type=int,
                       help=f"default {DECODER_DEFAULTS['decoder_channels']}")
    model.add_argument("--context-hidden-channels", type=int)
    model.add_argument("--alignment", choices=ALIGNMENT_MODES,
                       help=f"default {DECODER_DEFAULTS['alignment']}")
    train = parser.add_argument_group("training")
    # The pipeline's defaults are read when training starts (alignseg_keras.data needs
    # TensorFlow, which building the parser must not import).
    train.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"),
                       help=f"default: {PIPELINE_DEFAULTS_HELP}")
    train.add_argument("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help=f"default: {PIPELINE_DEFAULTS_HELP}")
    train.add_argument("--scale-step", type=float, metavar="STEP",
                       help="draw scales from MIN, MIN + STEP, ..., MAX only (the authors' "
                       "Cityscapes grid: --scale-range 0.7 2.1 --scale-step 0.1); default: "
                       "any scale in the range")
    train.add_argument("--batch-size", type=int, help=f"default: {PIPELINE_DEFAULTS_HELP}")
    train.add_argument("--cat-max-ratio", type=float, metavar="RATIO",
                       help="re-draw a crop (up to 10 times) while one class covers this share "
                       "of its labelled pixels or more, mmseg's cat_max_ratio (its configs: 0.75); "
                       "default: off")
    train.add_argument("--steps", type=int, default=CITYSCAPES_STEPS,
                       help="total optimizer steps (default %(default)s, the authors' "
                       "Cityscapes run)")
    train.add_argument("--checkpoint-every", type=int, default=1000,
                       help="steps between checkpoints, logs and resumable backups")
    train.add_argument("--lr", type=float, default=compile_defaults["learning_rate"],
                       help="base learning rate of the poly schedule (default %(default)g)")
    train.add_argument("--warmup-steps", type=int, default=compile_defaults["warmup_steps"],
                       help="linear warm-up steps (default %(default)s)")
    train.add_argument("--weight-decay", type=float, default=compile_defaults["weight_decay"],
                       help="default %(default)g")
    train.add_argument("--aux-weight", type=float, default=compile_defaults["aux_loss_weight"],
                       help="deep-supervision loss weight (default %(default)g)")
    train.add_argument(
        "--loss", default="ce", metavar="SPEC",
        help="the loss: one of " + ", ".join(LOSS_NAMES) + " or a weighted sum such as "
        "'ce:1,dice:0.5' (default %(default)s; see docs/losses.md); deep supervision "
        "applies it to both heads",
    )
    train.add_argument(
        "--aux-loss", default=None, metavar="SPEC",
        help="the deep-supervision head's loss, in the terms of --loss (default: the same "
        "as --loss); the authors' criteria give that head plain cross-entropy: "
        "--aux-loss ce (docs/training.md)",
    )
    train.add_argument("--ohem", action="store_true", help="the same as --loss ohem")
    train.add_argument("--ohem-threshold", type=float, default=ohem["threshold"],
                       help="default %(default)g")
    train.add_argument("--ohem-min-kept", type=int, default=ohem["min_kept"],
                       help="default %(default)s")
    train.add_argument("--focal-gamma", type=float, default=focal["gamma"],
                       help="focusing parameter of --loss focal (default %(default)g)")
    train.add_argument("--precision", choices=sorted(PRECISIONS), default="float32",
                       help="float16/bfloat16: mixed precision (float16 on GPUs; bfloat16 on GPUs, "
                       "TPUs and CPUs with AMX or AVX512-BF16; a warning says when this "
                       "machine has no fast path for it)")
    train.add_argument("--xla", action="store_true",
                       help="compile training steps with XLA (TensorFlow; JAX always does)")
    train.add_argument("--distribute", choices=("none", "mirrored", "multi_worker", "data_parallel"),
                       default="none",
                       help="mirrored: tf.distribute on one machine's GPUs (TensorFlow); "
                       "data_parallel: keras.distribution over all devices of all processes "
                       "(JAX; several hosts with the job options); multi_worker: refused "
                       "(keras-team/keras#20585). BatchNorm statistics span the global batch, "
                       "which must be a multiple of the device count. The loss is the mean of "
                       "each replica's on TensorFlow (OHEM's --ohem-min-kept per replica, as "
                       "the authors' per-GPU criterion), one mean over the global batch on JAX "
                       "(docs/training.md)")
    from alignseg_keras.multiprocess import add_job_arguments

    add_job_arguments(parser.add_argument_group("multi-process job (--distribute data_parallel)"))
    train.add_argument("--val-pictures", type=int, default=4, metavar="N",
                       help="draw N images of the validation split (prediction, offsets, "
                       "confusion) into TensorBoard at every checkpoint (default %(default)s)")
    train.add_argument("--no-pictures", action="store_true", help="no TensorBoard pictures")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output-dir", default="runs/train")
    train.add_argument("--resume-with-other-data", action="store_true",
                       help="resume the run in --output-dir on other training data than it "
                       "started on (refused otherwise: a new experiment given the folder of "
                       "an unfinished one)")
    parser.set_defaults(func=run)


def _strategy(name, batch_size):
    """The `tf.distribute` strategy (or Keras distribution) of --distribute `name`."""
    import keras

    from alignseg_keras import multiprocess

    if name == "multi_worker":
        raise ValueError(multiprocess.MULTI_WORKER_MIRRORED_MESSAGE)
    if name == "data_parallel":  # joined in run(); fit runs under the global distribution
        return keras.distribution.distribution()
    if name != "none" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"--distribute {name} uses tf.distribute and needs KERAS_BACKEND=tensorflow (the "
            f"backend is {keras.backend.backend()!r}); on JAX use --distribute data_parallel "
            "(docs/jax.md); on torch, alignseg train runs on one device (docs/torch.md)."
        )
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        replicas = strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise ValueError(
                f"--batch-size {batch_size} must be a multiple of the {replicas} replicas of "
                "--distribute mirrored: each trains on an equal slice (TensorFlow fails inside "
                "the first step otherwise, keras-team/keras#19246).")
        return strategy
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def training_loss(args):
    """The loss of `--loss` (and `--ohem`), with the options of its terms."""
    spec = args.loss
    if args.ohem:
        if spec not in ("ce", "ohem"):
            raise ValueError(f"--ohem and --loss {spec} disagree; use --loss alone (e.g. 'ohem,dice:0.5').")
        spec = "ohem"
    return _loss_of_spec(spec, args)


def auxiliary_loss(args):
    """The deep-supervision head's loss of `--aux-loss`, or None (the main loss)."""
    if args.aux_loss is None:
        return None
    try:
        return _loss_of_spec(args.aux_loss, args)
    except ValueError as error:
        raise ValueError(f"--aux-loss: {error}") from None


def _loss_of_spec(spec, args):
    """`losses.loss_from_spec` with the options of the command line's terms."""
    from alignseg_keras.losses import loss_from_spec

    options = {
        "ohem": {"threshold": args.ohem_threshold, "min_kept": args.ohem_min_kept},
        "focal": {"gamma": args.focal_gamma},
    }
    return loss_from_spec(spec, options)


def _build_model(args, num_classes):
    from alignseg_keras import AlignSeg
    from alignseg_keras.cli.common import jit_compile_setting
    from alignseg_keras.models.preset_files import is_preset_directory

    architecture = {
        "backbone": args.backbone,
        "backbone_weights": args.backbone_weights,
        "decoder_channels": args.decoder_channels,
        "context_hidden_channels": args.context_hidden_channels,
        "alignment": args.alignment,
    }
    given = {name: value for name, value in architecture.items() if value is not None}
    if given and args.preset and is_preset_directory(args.preset):
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(
            f"{options} would change the architecture of the preset directory "
            f"{args.preset}, which has its own (and weights for it); leave them out, or "
            "start from a preset name."
        )
    if args.preset:
        model = AlignSeg.from_preset(args.preset, num_classes=num_classes, **given)
    else:
        model = AlignSeg(num_classes, **given)
    model.compile(
        loss=training_loss(args),
        learning_rate=args.lr,
        total_steps=args.steps,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        aux_loss_weight=args.aux_weight,
        aux_loss=auxiliary_loss(args),
        jit_compile=jit_compile_setting(args.xla),
    )
    return model


def training_batches(dataset, model, args):
    """The augmented batches; crops are padded with the model's own mean (its image
    converter's), so that padding is zero after normalisation."""
    from alignseg_keras.data import training_pipeline

    return training_pipeline(
        dataset,
        crop_size=tuple(args.crop_size),
        batch_size=args.batch_size,
        scale_range=tuple(args.scale_range),
        scale_step=args.scale_step,
        fill_mean=model.image_converter.mean,
        seed=args.seed,
        cat_max_ratio=args.cat_max_ratio,
    )


def resolve_pipeline_defaults(args):
    """Fills the options left out with `training_pipeline`'s defaults (one definition)."""
    from alignseg_keras.cli.common import signature_defaults
    from alignseg_keras.data import training_pipeline

    defaults = signature_defaults(training_pipeline)
    for option in PIPELINE_OPTIONS:
        if getattr(args, option) is None:
            setattr(args, option, defaults[option])
    return args


def _check_arguments(args):
    import keras

    from alignseg_keras import multiprocess

    resolve_pipeline_defaults(args)
    multiprocess.check_job_arguments(args)  # before the output folder is made
    if args.steps < 1 or args.checkpoint_every < 1 or args.batch_size < 1:
        raise ValueError("--steps, --checkpoint-every and --batch-size must be positive.")
    if args.scale_step is not None and not args.scale_step > 0:
        raise ValueError(f"--scale-step must be positive; received {args.scale_step}.")
    if args.xla and keras.backend.backend() == "torch":
        raise ValueError(
            "--xla compiles the training step with XLA, which the torch backend does not "
            "have (Keras would hand the step to torch.compile instead, which alignseg_keras "
            "does not support). Leave out --xla on torch, or train with KERAS_BACKEND=jax "
            "(always compiled with XLA) or KERAS_BACKEND=tensorflow."
        )
    _check_optimizer_arguments(args)
    training_loss(args)  # a bad --loss or --aux-loss fails before any data is read
    auxiliary_loss(args)
    _check_loss_options(args)
    if args.backbone:  # a typo failed in keras-hub's words, after the output folder was made
        from alignseg_keras.backbones.encoders import RESNET_ARCHITECTURES
        from alignseg_keras.backbones.encoders import check_encoder_name

        if args.backbone not in RESNET_ARCHITECTURES:
            check_encoder_name(args.backbone)


def _check_optimizer_arguments(args):
    """--lr, --aux-weight and --warmup-steps: a negative rate climbs the loss, without an error."""
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number; received {args.lr}.")
    if not (math.isfinite(args.aux_weight) and args.aux_weight >= 0):
        raise ValueError(f"--aux-weight must be a number of at least 0; received {args.aux_weight}.")
    if not 0 <= args.warmup_steps < args.steps:
        raise ValueError(f"--warmup-steps must be at least 0 and fewer than --steps "
                         f"({args.steps}); received {args.warmup_steps}.")


def _check_loss_options(args):
    """Options of a loss that neither --loss nor --aux-loss uses would be ignored: refused."""
    from alignseg_keras.cli.common import signature_defaults
    from alignseg_keras.losses import FocalLoss
    from alignseg_keras.losses import OhemCrossEntropy

    specs = [args.loss, args.aux_loss or "", "ohem" if args.ohem else ""]
    terms = {term.split(":")[0].strip() for spec in specs for term in spec.split(",")}
    ohem, focal = signature_defaults(OhemCrossEntropy), signature_defaults(FocalLoss)
    for option, value, default, term in [
            ("--ohem-threshold", args.ohem_threshold, ohem["threshold"], "ohem"),
            ("--ohem-min-kept", args.ohem_min_kept, ohem["min_kept"], "ohem"),
            ("--focal-gamma", args.focal_gamma, focal["gamma"], "focal")]:
        if value != default and term not in terms:
            raise ValueError(f"{option} sets the {term} loss, which neither --loss {args.loss} "
                             f"nor --aux-loss uses: it would be ignored.")


def _remove_killed_writes(output_dir):
    """Removes the temporary files a killed run left in the output folder and its backups.

    Process 0 alone, once the job is joined (before, every process reads itself
    as process 0): the others never write there.
    """
    from alignseg_keras import multiprocess
    from alignseg_keras.atomic import remove_temporaries

    if multiprocess.is_chief():
        remove_temporaries(output_dir)
        remove_temporaries(os.path.join(output_dir, "backup"))


def _prepare_output(args):
    """Checks --output-dir; returns the final model's path."""
    from alignseg_keras.cli.common import prepare_output_dir

    output = prepare_output_dir(args.output_dir, "--output-dir")
    final_path = os.path.join(output, "model.keras")
    _check_not_finished(final_path)
    return final_path


def _check_not_finished(final_path):
    """Refuses a folder whose training has finished (its model saved, its backups removed)."""
    from alignseg_keras.callbacks import list_backups

    output = os.path.dirname(final_path)
    if os.path.exists(final_path) and not list_backups(os.path.join(output, "backup")):
        raise ValueError(
            f"{final_path} exists: the training in {output} has finished. Use another "
            "--output-dir to train again, or move that folder away."
        )


def _set_aside_previous_run(output_dir):
    """Moves the checkpoint, history and TensorBoard logs of an earlier run aside before
    training starts over (the logs: TensorBoard showed both runs' points at the same steps)."""
    from alignseg_keras.atomic import move_aside
    from alignseg_keras.callbacks import LOGS_FOLDER

    for name in ("checkpoint.keras", "history.csv", LOGS_FOLDER):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            target = move_aside(path, "previous")
            print(f"No usable backup to resume from: training starts over; the earlier "
                  f"{path} was moved to {target}.", file=sys.stderr)


def _nan_message(error, backup, args):
    """The NaN stop's message, with where a re-run resumes and how to avoid diverging again.

    Process 0 of a job moves the diverged backup aside and names the one a re-run
    resumes from; the other processes leave both to it (the shared folder may still
    hold the diverged backup when they look)."""
    from alignseg_keras import multiprocess

    backup.set_aside_if_diverged(error.step)
    left = backup.backups()
    if not multiprocess.is_chief():
        resume = ("Process 0 of the job says where re-running the command resumes (it sets "
                  "aside a backup that diverged)")
    elif left:
        resume = (f"Re-running the same command resumes from {left[0][1]}, the newest backup "
                  "with finite weights (the loss may have grown before it: see history.csv)")
    else:
        resume = "No backup with finite weights is left: re-running the command starts over"
    return (f"{error}\n{resume}; give it a lower learning rate, e.g. --lr {args.lr / 10:g}, "
            "or it may diverge again.")


def _disk_full_message(error, output_dir):
    return (f"alignseg train: error: the disk is full ({error}). Nothing was lost: the last "
            f"complete backup in {os.path.join(output_dir, 'backup')} is kept. Free some space "
            "and run the same command again to resume.")


def _unwritable_message(error, output_dir):
    return (f"alignseg train: error: the output folder cannot be written ({error}). Nothing "
            f"was lost: the last complete backup in {os.path.join(output_dir, 'backup')} is "
            "kept. Make the folder writable and run the same command again to resume.")


def _is_unwritable(error):
    """Whether `error` says a file may not be written (permissions, a read-only file
    system): an OSError, or TensorFlow's PermissionDeniedError (TensorBoard's event
    writer), told by its name to import no TensorFlow."""
    return (isinstance(error, PermissionError)
            or getattr(error, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM)
            or type(error).__name__ == "PermissionDeniedError")


def epoch_plan(total_steps, checkpoint_every, epochs_done, steps_done):
    """`(epochs, steps_per_epoch)` for `fit` to end at `total_steps` optimizer steps.

    An epoch is the stretch between two checkpoints: `checkpoint_every` steps,
    or the steps left when fewer are (then the progress bar counts to them, not
    to `checkpoint_every`). The plan starts from the optimizer steps restored
    (`steps_done`), not from `epochs_done * checkpoint_every`: a run resumed
    with another --checkpoint-every ends at `total_steps`, neither short of it
    nor past it.
    `epochs == epochs_done` when nothing is left; `StopAtStep` ends a last,
    shorter epoch.
    """
    remaining = max(total_steps - steps_done, 0)
    if remaining == 0:
        return epochs_done, checkpoint_every
    steps_per_epoch = min(checkpoint_every, remaining)
    return epochs_done + math.ceil(remaining / steps_per_epoch), steps_per_epoch


def _check_and_record_data(args, pairs, resumed):
    """Refuses a resume on other training data than the run started on, in every process
    of a job (`training_data`); records the data a run starts or goes on with (`pairs`:
    the files of --dataset files, as `file_pairs` lists them)."""
    from alignseg_keras import multiprocess
    from alignseg_keras.cli import training_data

    refusal = None
    if multiprocess.is_chief():
        try:
            training_data.check_and_record(args.output_dir, training_data.describe(args, pairs),
                                           resumed, allow_other=args.resume_with_other_data)
        except training_data.OtherTrainingDataError as error:
            refusal = error
    multiprocess.raise_if_chief_refused(refusal)


def _resume_message(restored, steps_done, total_steps):
    """What a resume says; a ValueError (the backups kept) when --steps is below the steps
    done: the run ended there, saved as finished, and the right --steps was refused."""
    if steps_done > total_steps:
        raise ValueError(
            f"--steps {total_steps} is below the {steps_done} steps done by the backup "
            f"{restored}; nothing was changed and the backups stay. Re-run with the run's "
            f"--steps to go on, or with --steps {steps_done} to end the run with the model "
            "as it is.")
    return f"Resuming from {restored}: {steps_done} of {total_steps} steps done."


def _train(model, batches, callbacks, backup, steps_done, args, final_path):
    """Trains what the backup has not done yet (`steps_done` optimizer steps
    restored), then saves the final model atomically."""
    from alignseg_keras.callbacks import AtomicModelCheckpoint
    from alignseg_keras.cli.common import end_progress_line
    from alignseg_keras.multiprocess import save_on_chief

    epochs, steps_per_epoch = epoch_plan(args.steps, args.checkpoint_every,
                                         backup.epochs_done, steps_done)
    if backup.epochs_done < epochs:
        try:
            model.fit(batches, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      callbacks=callbacks)
        except BaseException:
            end_progress_line()
            raise
    else:  # a kill after the last backup may have come before the checkpoint's save
        for checkpoint in callbacks:
            if isinstance(checkpoint, AtomicModelCheckpoint):
                checkpoint.set_model(model)
                checkpoint.on_epoch_end(backup.epochs_done - 1)
    # Of a multi-process job, only process 0 keeps it (all take part in saving).
    save_on_chief(model, final_path)


def _pictures(args):
    """The `SegmentationPictures` arguments of --val-pictures, or None (off, or no validation split)."""
    from alignseg_keras.cli.common import load_dataset

    from alignseg_keras import multiprocess

    if args.no_pictures or args.val_pictures < 1 or args.dataset == "files":
        return None
    if multiprocess.process_count() > 1:
        # Predictions inside a callback of a multi-process job are not tested; the
        # pictures are a single-process feature for now.
        print("No TensorBoard pictures in a multi-process job.", file=sys.stderr)
        return None
    try:
        dataset, _, class_names = load_dataset(args, "val")
        from alignseg_keras.tensorboard_pictures import take_examples

        images, masks = take_examples(dataset, args.val_pictures)
    except Exception as error:  # e.g. a data folder with the training split only
        print(f"No TensorBoard pictures: the validation split cannot be read ({error}).",
              file=sys.stderr)
        return None
    if not images:
        return None
    return {"images": images, "masks": masks, "class_names": class_names,
            "max_images": args.val_pictures}


def run(args):
    import contextlib

    import keras

    from alignseg_keras import multiprocess
    from alignseg_keras.atomic import single_writer
    from alignseg_keras.cli.common import missing_folders
    from alignseg_keras.cli.common import remove_empty_folders

    _check_arguments(args)
    new_folders = missing_folders(args.output_dir)
    final_path = _prepare_output(args)
    keras.utils.set_random_seed(args.seed)
    multiprocess.start_data_parallel(args)  # joins a JAX job first: before any computation
    # Process 0 alone writes the output folder (the others write scratch copies); if it
    # cannot hold it, the whole job stops. A folder this run made is removed again if the
    # run ends before writing anything there (wrong data paths, a refused argument).
    try:
        with contextlib.ExitStack() as output_lock:
            refusal = None
            if multiprocess.is_chief():
                try:
                    output_lock.enter_context(single_writer(
                        os.path.dirname(final_path), "alignseg train",
                        remove_if_unused=bool(new_folders)))
                except ValueError as error:
                    refusal = error
            multiprocess.raise_if_chief_refused(refusal)
            return _run_in_output_folder(args, final_path)
    finally:
        remove_empty_folders(new_folders[1:])


def _run_in_output_folder(args, final_path):
    """`run` once the output folder is this run's alone."""
    import keras

    from alignseg_keras import multiprocess
    from alignseg_keras.atomic import is_disk_full
    from alignseg_keras.callbacks import NonFiniteLossError
    from alignseg_keras.callbacks import ResumableBackup
    from alignseg_keras.callbacks import training_callbacks
    from alignseg_keras.cli.common import file_pairs
    from alignseg_keras.cli.common import load_dataset
    from alignseg_keras.cli.common import print_kernel_note
    from alignseg_keras.cli.common import print_message
    from alignseg_keras.cli.common import warn_about_precision
    from alignseg_keras.optimizers import optimizer_step

    _check_not_finished(final_path)  # again: a run that held the folder may have finished
    _remove_killed_writes(os.path.dirname(final_path))
    if PRECISIONS[args.precision]:
        keras.mixed_precision.set_global_policy(PRECISIONS[args.precision])
        warn_about_precision("train", args.precision)
    else:  # measured in float32; bfloat16 has its own warning on such CPUs
        print_kernel_note("train", "training")
    # The files of --dataset files are listed once: those trained on are those recorded.
    pairs = file_pairs(args) if args.dataset == "files" else None
    dataset, num_classes, _ = load_dataset(args, "train", training=True, pairs=pairs)
    strategy = _strategy(args.distribute, args.batch_size)
    with strategy.scope():
        model = _build_model(args, num_classes)
    batches = training_batches(dataset, model, args)
    callbacks = multiprocess.callbacks_for_this_process(training_callbacks(
        args.output_dir, total_steps=args.steps, pictures=_pictures(args)))
    backup = next(callback for callback in callbacks if isinstance(callback, ResumableBackup))
    backup.set_model(model)
    multiprocess.check_same_backups(backup.backups(), backup.backup_dir)  # before a load that waits
    restored = backup.restore()
    steps_done = optimizer_step(model)
    if restored is not None:  # before the folder's first change (data record, set aside)
        print(_resume_message(restored, steps_done, args.steps), flush=True)
    _check_and_record_data(args, pairs, resumed=restored is not None)
    if restored is None and multiprocess.is_chief():
        _set_aside_previous_run(args.output_dir)
    multiprocess.check_same_start(model)
    try:
        _train(model, batches, callbacks, backup, steps_done, args, final_path)
    except NonFiniteLossError as error:
        print_message("train", "error", _nan_message(error, backup, args))
        return 1
    except Exception as error:  # OSError, or TensorFlow's errors of TensorBoard's writer
        if is_disk_full(error):
            print(_disk_full_message(error, args.output_dir), file=sys.stderr)
        elif _is_unwritable(error):
            print(_unwritable_message(error, args.output_dir), file=sys.stderr)
        else:
            raise
        return 1
    backup.discard()
    if multiprocess.is_chief():
        print(f"Saved the trained model to {final_path}")
    return 0
