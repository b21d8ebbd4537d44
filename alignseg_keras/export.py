"""Exporting AlignSeg for serving: TF SavedModel (TF Serving), ONNX and LiteRT.

`export_saved_model` writes a SavedModel with Keras' `ExportArchive` and four
signatures (`SIGNATURES`), for tensor clients and for clients that send image
files:

    signature          input                                   outputs
    serving_default    images: uint8 [batch, height, width, 3]   labels, probabilities
    labels             images                                  labels
    encoded            encoded_images: string [batch]          labels, probabilities
    encoded_labels     encoded_images                          labels

    labels:        int32   [batch, height, width]   (argmax class)
    probabilities: float32 [batch, height, width, num_classes]  (softmax)

`images` are RGB pixels of any height and width, up to `MAX_PIXELS` in one
request (32 images of 1024x2048). `encoded_images` are PNG or
JPEG files (base64 `{"b64": ...}` in TF Serving's REST JSON), decoded in the
graph to RGB (grey and alpha channels converted); the images of one request
must share a size, and one of more than `MAX_PIXELS` pixels (or a request
of more than `MAX_PIXELS` together) is refused from
the headers before anything is decoded. The `labels` signatures exist because the
probabilities of one 1024x2048 image with 19 classes are 150 MB.

Normalisation and padding happen inside the model, so clients send raw
pixels. Being uint8, they are always finite: a NaN or infinite pixel cannot
reach the model (float images are refused by the signature's dtype). An empty
batch or 0-sized images return empty `labels` and `probabilities` of the
matching shape, without running the network. The SavedModel is self-contained: TF Serving, `saved_model_cli` or
`tf.saved_model.load` use it without Keras or alignseg_keras.

ONNX and LiteRT go through Keras' own `model.export(format=...)` and keep the
model's plain interface (float images in, logits out); they need extra
packages (`tf2onnx` for ONNX; LiteRT uses TensorFlow's converter). They are
traced with the alignment's `keras.ops` sampler (`portable_sampling`), the
SavedModel with TensorFlow's fused one. Every export to a local path is
written atomically: under a temporary name beside its destination, then
renamed, so that a reader (TF Serving watching a model folder, a server
reloading a file) never sees a partly written one, and a failed export leaves
the old one as it was (URLs such as `gs://...` are written in place).

Example:
```python
model = keras.saving.load_model("alignseg.keras")
export_saved_model(model, "serving/alignseg/1")
```
"""

import importlib.util
import numbers
import os

import keras
import tensorflow as tf

from alignseg_keras.atomic import atomic_folder
from alignseg_keras.atomic import atomic_path
from alignseg_keras.atomic import check_replaceable_folder
from alignseg_keras.atomic import check_writable
from alignseg_keras.checks import check_finite_weights
from alignseg_keras.export_formats import EXPORT_FORMATS
from alignseg_keras.export_formats import FORMAT_NAMES
from alignseg_keras.export_formats import FORMAT_SUFFIXES
from alignseg_keras.export_formats import check_export_backend
from alignseg_keras.export_formats import check_export_file
from alignseg_keras.export_formats import check_float32_computation
from alignseg_keras.export_formats import format_for_path
from alignseg_keras.image_files import MAX_PIXELS
from alignseg_keras.inference import float_image_signature
from alignseg_keras.inference import input_image_size
from alignseg_keras.inference import output_classes
from alignseg_keras.layers.alignment import portable_sampling

SERVING_INPUT = "images"
ENCODED_INPUT = "encoded_images"
# The SavedModel's signatures: name -> (input name, output names).
SIGNATURES = {
    "serving_default": (SERVING_INPUT, ("labels", "probabilities")),
    "labels": (SERVING_INPUT, ("labels",)),
    "encoded": (ENCODED_INPUT, ("labels", "probabilities")),
    "encoded_labels": (ENCODED_INPUT, ("labels",)),
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The bytes up to the width and height of a PNG: signature, IHDR length and type, width, height.
_PNG_HEADER_BYTES = 24
_JPEG_SIGNATURE = b"\xff\xd8\xff"

# Packages each format needs beyond TensorFlow and Keras, and its file suffix.
FORMAT_REQUIREMENTS = {"saved_model": (), "onnx": ("tf2onnx", "onnx"), "litert": ()}
# What a SavedModel folder holds; an export replaces a folder holding only these, and
# `saved_model.pb` among them (SAVED_MODEL_REQUIRED). Not
# TF Serving's assets.extra (warm-up requests), which a user adds and must not lose.
SAVED_MODEL_ENTRIES = ("saved_model.pb", "saved_model.pbtxt", "fingerprint.pb", "variables", "assets")
# What an earlier export holds for certain (a folder of `assets` alone is a user's).
SAVED_MODEL_REQUIRED = ("saved_model.pb",)


def serving_signature(input_name=SERVING_INPUT, image_size=(None, None)):
    """The input of a serving function: uint8 RGB images of `image_size` (None: any
    height or width), or encoded PNG/JPEG files."""
    if input_name == ENCODED_INPUT:
        return tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)
    return tf.TensorSpec([None, *image_size, 3], tf.uint8, name=SERVING_INPUT)


def model_forward(model):
    """The model's float32 logits of uint8 images, as one `tf.function`.

    The signatures of one export share it, so that the network is traced and
    stored once rather than once per signature.
    """
    return tf.function(
        lambda images: tf.cast(model(images, training=False), tf.float32),
        input_signature=[serving_signature(image_size=input_image_size(model))],
    )


def serving_function(model, outputs=("labels", "probabilities"), forward=None,
                     max_pixels=MAX_PIXELS):
    """The function behind `serving_default` and `labels`: images to labels (and probabilities).

    Args:
        model: a Keras model from RGB images (0..255) to logits
            `(B, H, W, num_classes)` at the input size, such as `AlignSeg`.
        outputs: the outputs to return, from `"labels"` and `"probabilities"`.
        forward: the model's `model_forward`, shared between signatures; None
            makes one.
        max_pixels: the most pixels of one request (batch x height x width),
            as for encoded files: a larger one fails with an
            `InvalidArgumentError` that says so, before the network runs
            (whose activations would take tens of GiB); None: no limit.

    Returns:
        A Python function of a uint8 `images` tensor returning a dict of
        `labels`: int32 (B, H, W) and `probabilities`: float32 (B, H, W, C)
        (those in `outputs`); empty for an empty batch or 0-sized images.
    """

    num_classes = output_classes(model)
    forward = forward or model_forward(model)
    image_size = list(input_image_size(model))

    def serve(images):
        # The signature declares the shape, but TensorFlow only checks the
        # dtype when called; this names a wrong rank, channel count or (for a
        # model of one input size) image size clearly, also of decoded files.
        images = tf.ensure_shape(images, [None, *image_size, 3], name=SERVING_INPUT)
        pixels = tf.reduce_prod(tf.cast(tf.shape(images)[:3], tf.int64))
        if max_pixels is not None:
            small_enough = tf.debugging.assert_less_equal(  # as the files of `decode_images`
                pixels, tf.constant(max_pixels, tf.int64),
                message=f"The images of one request hold more than {max_pixels} pixels "
                "together; they were not predicted (send fewer or smaller images per request)",
            )
            with tf.control_dependencies([small_enough]):
                images = tf.identity(images)
        logits = tf.cond(
            pixels > 0,
            lambda: forward(images),
            lambda: tf.zeros(tf.concat([tf.shape(images)[:3], [num_classes]], 0)),
        )
        results = {
            "labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }
        return {name: results[name] for name in outputs}

    return serve


def _encoded_image_size(data):
    """`[height, width]` of a PNG (its IHDR chunk) or JPEG (its SOF marker), not decoded."""
    is_png = tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), _JPEG_SIGNATURE)
    known = tf.debugging.assert_equal(
        is_png | is_jpeg, True, message="An encoded image is neither a PNG nor a JPEG file"
    )
    # Reading the width and height of a PNG shorter than its header failed in other ops,
    # whose messages held the file's bytes (a UnicodeDecodeError in Python clients).
    whole_header = tf.debugging.assert_equal(
        is_png & (tf.strings.length(data) < _PNG_HEADER_BYTES), False,
        message=f"An encoded PNG file is cut short: shorter than its {_PNG_HEADER_BYTES}-byte "
        "header (an interrupted upload?)",
    )
    with tf.control_dependencies([known, whole_header]):
        return tf.cond(
            is_png,
            lambda: tf.reverse(
                tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32, little_endian=False),
                [0],
            ),
            lambda: tf.image.extract_jpeg_shape(data)[:2],
        )


def decode_images(encoded, max_pixels=MAX_PIXELS, image_size=(None, None)):
    """Decodes a batch of PNG/JPEG files to uint8 RGB images `(batch, H, W, 3)`, in the graph.

    Every file's size is read from its header first: a file of more than
    `max_pixels` pixels, files of more than `max_pixels` together (None: no
    limit), one of another format, or a size different from the first file's
    fails with an `InvalidArgumentError` that says so, before anything is decoded. Grey and
    RGBA files become RGB. An empty batch gives `(0, H, W, 3)`, of the model's
    `image_size` where it has one (0 where None).

    Example:
    ```python
    images = decode_images(tf.constant([open("scene.png", "rb").read()]))
    ```
    """
    encoded = tf.ensure_shape(encoded, [None], name=ENCODED_INPUT)

    def decode_all():
        sizes = tf.map_fn(
            _encoded_image_size, encoded, fn_output_signature=tf.TensorSpec([2], tf.int32)
        )
        pixels = tf.cast(sizes[:, 0], tf.int64) * tf.cast(sizes[:, 1], tf.int64)
        checks = [] if max_pixels is None else [
            tf.debugging.assert_less_equal(
                tf.reduce_max(pixels),
                tf.constant(max_pixels, tf.int64),
                message=f"An encoded image has more than {max_pixels} pixels; it was not decoded",
            ),
            tf.debugging.assert_less_equal(  # many small files could decode to gigabytes too
                tf.reduce_sum(pixels),
                tf.constant(max_pixels, tf.int64),
                message=f"The encoded images of one request hold more than {max_pixels} pixels "
                "together; nothing was decoded (send fewer images per request)",
            ),
        ]
        checks += [
            tf.debugging.assert_equal(
                sizes,
                tf.broadcast_to(sizes[:1], tf.shape(sizes)),
                message="The encoded images of one request must share a height and width "
                "(send differently sized images in separate requests); [height, width] of each:",
                summarize=64,
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.map_fn(
                lambda data: tf.io.decode_image(
                    data, channels=3, dtype=tf.uint8, expand_animations=False
                ),
                encoded,
                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            )

    empty_shape = [0, *(size or 0 for size in image_size), 3]
    return tf.cond(
        tf.size(encoded) > 0, decode_all, lambda: tf.zeros(empty_shape, tf.uint8)
    )


def encoded_serving_function(model, outputs=("labels", "probabilities"), forward=None,
                             max_pixels=MAX_PIXELS):
    """The function behind `encoded` and `encoded_labels`: PNG/JPEG files to labels (and probabilities).

    Args:
        model: a Keras model from RGB images to logits, such as `AlignSeg`.
        outputs: the outputs to return, from `"labels"` and `"probabilities"`.
        forward: the model's `model_forward`, shared between signatures.
        max_pixels: the most pixels of one file and of one request (None: no limit).
    """
    serve_images = serving_function(model, outputs, forward, max_pixels)
    image_size = input_image_size(model)

    def serve(encoded_images):
        return serve_images(decode_images(encoded_images, max_pixels, image_size=image_size))

    return serve


def check_max_pixels(max_pixels):
    """Raises `ValueError` unless `max_pixels` is None (no limit) or a positive int: 0
    (the command line's "no limit") or a negative value was exported as a limit that
    refused every request."""
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        raise ValueError(
            f"`max_pixels` must be None (no limit) or a positive int; received {max_pixels!r} "
            "(`alignseg export --max-pixels 0` means no limit: pass None)."
        )


def export_saved_model(model, export_dir, max_pixels=MAX_PIXELS):
    """Writes a TF Serving SavedModel with the four signatures above (`SIGNATURES`).

    Args:
        model: an `AlignSeg` (or any model from images to logits at input size).
        export_dir: folder to write; for TF Serving, a numbered version folder
            such as `models/alignseg/1`. It is written atomically (as a hidden
            folder beside it, then renamed), so TF Serving never loads a
            partly written version. An existing SavedModel there is replaced;
            a folder holding other files (TF Serving's `assets.extra` among
            them) is refused with a `ValueError`. Paths such as `gs://...`
            are written in place.
        max_pixels: the most pixels of one request (batch x height x width) and
            of one encoded file, which the signatures refuse beyond it before
            running the network (8192 x 8192 by default); None: no limit.

    Example:
    ```python
    export_saved_model(model, "models/alignseg/1")
    served = tf.saved_model.load("models/alignseg/1").signatures["serving_default"]
    labels = served(images=tf.zeros((1, 512, 1024, 3), tf.uint8))["labels"]
    ```
    """
    check_keras_model(model)
    check_export_backend("saved_model", keras.backend.backend())
    check_max_pixels(max_pixels)
    check_saved_model_folder(export_dir)  # before the tracing
    archive = keras.export.ExportArchive()
    # The endpoints track the variables they use. `archive.track(model)` would
    # also store the model's Keras variables a second time (Keras 3.15),
    # doubling the size of the SavedModel.
    forward = model_forward(model)
    for name, (input_name, outputs) in SIGNATURES.items():
        make = encoded_serving_function if input_name == ENCODED_INPUT else serving_function
        signature = serving_signature(input_name, input_image_size(model))
        archive.add_endpoint(name, make(model, outputs, forward, max_pixels),
                             input_signature=[signature])
    if _is_url(export_dir):  # gs://, s3://...: object stores rename no folders
        archive.write_out(str(export_dir), verbose=False)
        return
    with atomic_folder(export_dir, SAVED_MODEL_ENTRIES, SAVED_MODEL_REQUIRED) as temporary:
        archive.write_out(str(temporary), verbose=False)


def check_keras_model(model):
    """Raises a `ValueError` unless `model` is a Keras model (a `FrozenInferenceModel`
    predicts in its process only: its constants are no Keras model to export) whose
    weights are finite (NaN logits would serve class 0 everywhere)."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Exports take a Keras model; received a {type(model).__name__}. Export the Keras "
            "model it was made from (for bfloat16, `inference.as_precision(model, "
            "\"bfloat16\")` or `alignseg export --precision bfloat16`)."
        )
    check_finite_weights(model, f"The model {model.name}")


def check_saved_model_folder(export_dir):
    """Raises the `ValueError` `export_saved_model` would raise for `export_dir`, at once."""
    implied = format_for_path(export_dir)
    if implied != "saved_model":  # `export m.tflite --format saved_model` made a folder so named
        raise ValueError(
            f"{export_dir} has the extension of {FORMAT_NAMES[implied]} files "
            f"({FORMAT_SUFFIXES[implied]}), but a SavedModel is a folder: give a folder name "
            f"(for TF Serving a version folder such as models/alignseg/1), or export to "
            f"{FORMAT_NAMES[implied]}."
        )
    if not _is_url(export_dir):
        check_replaceable_folder(export_dir, SAVED_MODEL_ENTRIES, SAVED_MODEL_REQUIRED)
        check_writable(export_dir)


def _is_url(path):
    return "://" in str(path)


def missing_requirements(format):
    """Names of the packages `format` needs that are not installed."""
    if format not in FORMAT_REQUIREMENTS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {EXPORT_FORMATS}.")
    return [name for name in FORMAT_REQUIREMENTS[format] if importlib.util.find_spec(name) is None]


def export_model(model, path, format="saved_model", max_pixels=MAX_PIXELS):
    """Exports `model` in `format`.

    `"saved_model"` writes the serving SavedModel (`export_saved_model`) into
    the folder `path`. `"onnx"` (file `*.onnx`) and `"litert"` (file
    `*.tflite`) use Keras' `model.export`, whose artifacts take float32
    images `[batch, height, width, 3]` (0..255) and return logits. Each is
    written atomically (see `export_saved_model` for an existing folder).

    Args:
        model: a Keras model from images to logits.
        path: destination folder (SavedModel) or file (ONNX, LiteRT).
        format: one of `"saved_model"`, `"onnx"`, `"litert"`.
        max_pixels: the SavedModel's request limit (`export_saved_model`);
            ONNX and LiteRT files check no input.

    Raises:
        ValueError: unknown format, a package the format needs is missing, or
            a backend other than TensorFlow (`check_export_backend`), a
            SavedModel folder that holds
            other files, a destination that cannot be written, or an ONNX or
            LiteRT export of a model that does not compute in float32
            (`check_float32_computation`); all before the conversion.

    Example:
    ```python
    export_model(model, "alignseg.onnx", format="onnx")
    ```
    """
    missing = missing_requirements(format)
    check_export_backend(format, keras.backend.backend())
    if missing:
        raise ValueError(
            f"Exporting to {format} needs the packages {', '.join(missing)}; "
            f"install them with `pip install {' '.join(missing)}`."
        )
    if format == "saved_model":
        export_saved_model(model, path, max_pixels)
        return
    check_export_file(path, format)
    check_keras_model(model)
    check_float32_computation(model, format)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    input_signature = float_image_signature(model, SERVING_INPUT)
    # TensorFlow's fused sampling kernel is a SavedModel op only: LiteRT has no builtin
    # for it, and ONNX Runtime (and its int8 quantisation) runs the gathers.
    # The file is written under a temporary name beside `path`, then renamed.
    with portable_sampling(), atomic_path(path, remove_abandoned=True) as temporary:
        model.export(str(temporary), format=format, input_signature=input_signature,
                     verbose=False)
