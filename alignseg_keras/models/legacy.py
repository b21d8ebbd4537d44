"""`.keras` files written by alignseg_keras 0.1, whose AlignSeg had no separate backbone.

In 0.1 the decoder's layers sat in the segmenter itself, beside the encoder; a
`.keras` file stores weights by that layer structure, so Keras cannot load such
a file into today's `AlignSeg` (whose decoder lives in its `AlignSegBackbone`).
`load_legacy_model` rebuilds the model from the old configuration, lays the
same layers out as 0.1 did to read the old weights file, and returns today's
model with those weights. The compiled state (optimizer) is not carried over.
"""

import json
import os
import tempfile
import zipfile

import keras

# Keys that only a 0.1 configuration has.
LEGACY_KEYS = ("decoder_channels", "input_shape")
LEGACY_FILE_MESSAGE = (
    "This AlignSeg was saved by alignseg_keras 0.1, whose layer layout differs from "
    "today's (the decoder now lives in an AlignSegBackbone). Load it with "
    "`alignseg_keras.models.legacy.load_legacy_model(path)` (weights only, no optimizer "
    "state), and save it again to upgrade the file."
)
WEIGHTS_FILE = "model.weights.h5"
# 0.1's offset heads were 256 wide whatever the decoder's width.
LEGACY_OFFSET_CHANNELS = 256


def is_legacy_config(config):
    """Whether an `AlignSeg` config dict was written by alignseg_keras 0.1."""
    return any(key in config for key in LEGACY_KEYS)


def legacy_arguments(config):
    """Today's `AlignSeg` arguments for a 0.1 configuration."""
    arguments = dict(config)
    arguments["image_shape"] = tuple(arguments.pop("input_shape", (None, None, 3)))
    arguments.pop("backbone_weights", None)  # the file holds the weights
    arguments["offset_channels"] = LEGACY_OFFSET_CHANNELS
    if isinstance(arguments.get("backbone"), dict):
        arguments["backbone"] = keras.saving.deserialize_keras_object(arguments["backbone"])
    return arguments


def load_legacy_model(path):
    """Loads a `.keras` file written by alignseg_keras 0.1 as today's `AlignSeg`.

    Args:
        path: the `.keras` file.

    Returns:
        An `AlignSeg` with the file's weights (not compiled).

    Example:
    ```python
    model = load_legacy_model("old_model.keras")
    model.save("model.keras")  # today's layout
    ```
    """
    from alignseg_keras.models.alignseg import AlignSeg

    with zipfile.ZipFile(path) as archive:
        saved = json.loads(archive.read("config.json"))
        if saved.get("class_name") != "AlignSeg" or not is_legacy_config(saved["config"]):
            raise ValueError(
                f"{os.fspath(path)!r} is not an AlignSeg saved by alignseg_keras 0.1."
            )
        model = AlignSeg(**legacy_arguments(saved["config"]))
        with tempfile.TemporaryDirectory() as folder:
            weights = os.path.join(folder, WEIGHTS_FILE)
            with open(weights, "wb") as file:
                file.write(archive.read(WEIGHTS_FILE))
            keras.saving.load_weights(_legacy_layout(model), weights)
    return model


def _legacy_layout(model):
    """A functional model over `model`'s layers, called in the order 0.1 built them.

    Keras reads a weights file by layer structure and order; this graph has the
    structure of 0.1's AlignSeg (encoder, then rcb1a, rcb2a, align_fa2, rcb2b,
    ... align_cm, rcb5a, align_fa5, rcb5b, then the heads), and its layers are
    the model's own, so loading into it loads the model.
    """
    backbone = model.backbone
    layer = backbone.get_layer
    images = keras.Input(model.image_shape)
    x = model.image_converter(images)
    if model.pad_to_multiple:
        x = model.get_layer("pad")(x)
    c2, c3, c4, c5 = layer("image_encoder_pyramid")(x)
    d1 = layer("rcb1a")(c2)
    d2 = layer("rcb2b")(layer("align_fa2")([d1, layer("rcb2a")(c3)]))
    d3 = layer("rcb3b")(layer("align_fa3")([d2, layer("rcb3a")(c4)]))
    d4 = layer("rcb4b")(layer("align_fa4")([d3, layer("rcb4a")(c5)]))
    context = layer("align_cm")(c5)
    d5 = layer("rcb5b")(layer("align_fa5")([d4, layer("rcb5a")(context)]))
    # The same output structure as 0.1 (a dict, whose keys order the heads).
    outputs = model.get_layer("head")(d5)
    if model.deep_supervision:
        outputs = {"logits": outputs, "aux_logits": model.get_layer("auxiliary_head")(d3)}
    return keras.Model(images, outputs)
