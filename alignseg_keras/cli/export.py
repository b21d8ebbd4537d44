"""`alignseg export`: a trained model as a TF Serving SavedModel, ONNX or LiteRT file."""

from alignseg_keras.cli.common import add_precision_argument
from alignseg_keras.export_formats import EXPORT_FORMATS
from alignseg_keras.export_formats import check_export_backend
from alignseg_keras.export_formats import check_export_precision
from alignseg_keras.export_formats import format_for_path
from alignseg_keras.image_files import MAX_PIXELS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a saved model for serving (SavedModel, ONNX, LiteRT)",
        description="Export a .keras model or a preset directory. saved_model (default) "
        "writes a SavedModel whose "
        "serving_default signature takes uint8 images [batch, height, width, 3] and returns "
        "int32 labels and float32 probabilities, 'labels' returns the labels only, and "
        "'encoded' / 'encoded_labels' take PNG or JPEG files (string [batch]) instead "
        "(docs/serving.md); for TF Serving give a numbered version "
        "folder, e.g. models/alignseg/1. onnx (file *.onnx, needs tf2onnx) and litert "
        "(file *.tflite; each the default for such a name) export the model as it is: "
        "float32 images in, logits out. "
        "--precision bfloat16 exports the model computing in bfloat16 (float32 outputs; "
        "SavedModel only: ONNX and LiteRT files need float32).",
    )
    parser.add_argument("model", help="a .keras file saved by alignseg, or a preset directory "
                        "(alignseg convert, save_to_preset)")
    parser.add_argument("export_path", metavar="EXPORT_DIR",
                        help="SavedModel folder, or the .onnx / .tflite file to write")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="export format (default: onnx for a name ending in .onnx, litert "
                        "for .tflite, else saved_model)")
    add_precision_argument(parser)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="the SavedModel refuses requests of more pixels (batch x height x "
                        f"width), and encoded files of more (default {MAX_PIXELS:,}; 0: no "
                        "limit)")
    parser.set_defaults(func=run)


def run(args):
    import keras

    args.format = args.format or format_for_path(args.export_path)
    if args.max_pixels < 0:
        raise ValueError(f"--max-pixels must be 0 (no limit) or more; received {args.max_pixels}.")
    check_export_precision(args.format, args.precision)  # before the model is loaded
    # Before alignseg_keras.export, which imports TensorFlow (a JAX or torch install may lack it).
    check_export_backend(args.format, keras.backend.backend())

    import tensorflow as tf

    from alignseg_keras.atomic import is_disk_full
    from alignseg_keras.checks import check_finite_weights
    from alignseg_keras.cli.common import load_saved_model
    from alignseg_keras.cli.common import prepare_output_file
    from alignseg_keras.cli.common import prepare_whole_folder
    from alignseg_keras.cli.common import with_precision
    from alignseg_keras.export_formats import check_export_file
    from alignseg_keras.export import check_saved_model_folder
    from alignseg_keras.export import export_model

    if args.format == "saved_model":
        # The folder itself appears only when the export is complete (TF Serving
        # would try to load an empty version folder).
        prepare_whole_folder(args.export_path, "EXPORT_DIR", check_saved_model_folder)
    else:
        prepare_output_file(args.export_path, "the export file")
        check_export_file(args.export_path, args.format)  # before the model is loaded
    model = load_saved_model(args.model)
    check_finite_weights(model, args.model)  # served, NaN logits would be class 0 everywhere
    model = with_precision(model, args)
    try:
        export_model(model, args.export_path, format=args.format,
                     max_pixels=args.max_pixels or None)
    except (OSError, tf.errors.OpError) as error:  # SaveV2's own error, or the converters'
        if not is_disk_full(error):
            raise
        raise ValueError(f"the disk holding {args.export_path} is full; nothing was changed "
                         "there (an earlier export is as it was). Free some space, or export "
                         "elsewhere.") from None
    print(f"Exported {args.model} ({args.format}, {args.precision}) to {args.export_path}")
    return 0
