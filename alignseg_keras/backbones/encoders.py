"""Image encoders with keras-hub's `pyramid_outputs` contract, and how AlignSeg reads them.

An image encoder for AlignSeg is any `keras.Model` that exposes
`pyramid_outputs`: a dict of feature maps keyed by level, `"Pn"` being `2^n`
times smaller than the input (keras-hub's `FeaturePyramidBackbone`:
`ResNetBackbone`, `EfficientNetBackbone`, ...; `MiTBackbone` keys its stride-4
to stride-32 maps `"P1".."P4"`). AlignSeg needs the four maps at strides 4, 8,
16 and 32; `pyramid_feature_model` finds them by their measured stride, not by
their key. `ResNetEncoder` gives this library's ResNets the same contract.
"""

import math
import os

import keras
import numpy as np

from alignseg_keras.backbones.keras_applications import applications_resnet
from alignseg_keras.backbones.resnet import basic_resnet
from alignseg_keras.backbones.resnet import deep_stem_resnet
from alignseg_keras.config_utils import deserialized
from alignseg_keras.config_utils import model_config
from alignseg_keras.config_utils import set_model_dtype_policy

# The strides AlignSeg reads, and the keras-hub level names they usually carry.
PYRAMID_STRIDES = (4, 8, 16, 32)
PYRAMID_LEVELS = ("P2", "P3", "P4", "P5")
# The size of the probe image whose feature sizes tell each level's stride.
STRIDE_PROBE_SIZE = 256

# Per-encoder input conventions: RGB mean / std (0..255 scale) and channel order.
IMAGENET_RGB = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr=False)
CAFFE_BGR = dict(mean=(123.68, 116.779, 103.939), std=(1.0, 1.0, 1.0), bgr=True)
AUTHORS_BGR = dict(
    mean=(122.67891434, 116.66876762, 104.00698793), std=(1.0, 1.0, 1.0), bgr=True
)

# architecture -> (builder, input convention, whether "imagenet" weights exist)
RESNET_ARCHITECTURES = {
    "resnet18": (basic_resnet, IMAGENET_RGB, False),
    "resnet34": (basic_resnet, IMAGENET_RGB, False),
    "resnet50": (applications_resnet, CAFFE_BGR, True),
    "resnet101": (applications_resnet, CAFFE_BGR, True),
    "resnet50_deepstem": (deep_stem_resnet, AUTHORS_BGR, False),
    "resnet101_deepstem": (deep_stem_resnet, AUTHORS_BGR, False),
}


@keras.saving.register_keras_serializable(package="alignseg_keras")
class ResNetEncoder(keras.Model):
    """A ResNet whose `pyramid_outputs` are its stage outputs `"P2".."P5"` (strides 4..32).

    - `resnet18` / `resnet34`: basic-block ResNets (torchvision layout).
    - `resnet50` / `resnet101`: `keras.applications` (ImageNet weights with
      `weights="imagenet"`; Caffe-style BGR input).
    - `resnet50_deepstem` / `resnet101_deepstem`: the authors' deep-stem
      bottleneck ResNets; their checkpoints load with `alignseg_keras.convert`.

    The model maps normalised images to the dict of the four stage outputs.
    `input_convention` is the mean, std and channel order its weights expect
    (used by `AlignSeg` when no image converter is given).

    Args:
        architecture: a name from `RESNET_ARCHITECTURES`.
        weights: None, or `"imagenet"` for `resnet50` / `resnet101`
            (downloaded by Keras when asked, or read from its cache).
        image_shape: input shape without the batch, `(None, None, 3)`.
        dtype: the dtype policy of every layer (e.g. `"mixed_bfloat16"`);
            None takes Keras' global policy. Not saved in the config (a
            loaded model takes the policy of the process that loads it).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Example:
    ```python
    encoder = ResNetEncoder("resnet18")
    features = encoder(np.zeros((1, 64, 64, 3), "float32"))  # {"P2": (1, 16, 16, 64), ...}
    ```
    """

    def __init__(self, architecture="resnet101", weights=None, image_shape=(None, None, 3),
                 dtype=None, **kwargs):
        if architecture not in RESNET_ARCHITECTURES:
            raise ValueError(
                f"Unknown ResNet architecture {architecture!r}; choose one of "
                f"{sorted(RESNET_ARCHITECTURES)}."
            )
        build, _, has_weights = RESNET_ARCHITECTURES[architecture]
        if weights is not None and not has_weights:
            raise ValueError(
                f"ResNetEncoder {architecture!r} has no downloadable weights; use "
                "weights=None (the deep-stem ResNets load the authors' ImageNet file with "
                "alignseg_keras.convert.load_backbone_weights)."
            )
        kwargs.setdefault("name", architecture)
        if build is applications_resnet:
            stages = applications_resnet(
                architecture, weights=weights, input_shape=image_shape, dtype=dtype
            )
        else:
            stages = build(architecture, input_shape=image_shape, dtype=dtype)
        outputs = dict(zip(PYRAMID_LEVELS, stages.outputs))
        super().__init__(inputs=stages.inputs[0], outputs=outputs, **kwargs)
        set_model_dtype_policy(self, dtype)
        self.pyramid_outputs = outputs
        self.architecture = architecture
        self.image_shape = tuple(image_shape)

    @property
    def input_convention(self):
        """The mean, std (RGB, 0..255 scale) and channel order the weights expect."""
        return dict(RESNET_ARCHITECTURES[self.architecture][1])

    def get_config(self):
        return {
            "architecture": self.architecture,
            "image_shape": self.image_shape,
            **model_config(self),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**deserialized(config, []))


def keras_hub_encoder(preset, load_weights=True, dtype=None):
    """A keras-hub backbone preset (e.g. `"resnet_vd_50_imagenet"`) as an image encoder.

    Needs keras-hub (`pip install keras-hub`), and downloads the preset when
    called (only then: a model saved with it reloads from its own file).
    The preset's image converter (`image_converter.json`), when it has one,
    states the encoder's input normalisation (`keras_hub_input_convention`);
    without one it is ImageNet-normalised RGB, `AlignSeg`'s default for
    encoders that state no convention and what keras-hub's vision backbones
    expect.

    Args:
        preset: a keras-hub preset name or directory of a `FeaturePyramidBackbone`.
        load_weights: bool, load the preset's weights.
        dtype: the dtype policy, passed to keras-hub's `from_preset` (None:
            keras-hub's choice, the global policy for most vision presets).
    """
    keras_hub = check_encoder_name(preset)
    try:
        encoder = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights,
                                                        dtype=dtype)
    except OSError as error:  # requests' ConnectionError among them: no network
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(
            f"The keras-hub preset {preset!r} could not be downloaded or read "
            f"({str(error).splitlines()[0][:200]}). Without a network, give the directory of "
            "a preset downloaded before, or one of this library's ResNets "
            f"({', '.join(RESNET_ARCHITECTURES)})."
        ) from error
    convention = keras_hub_input_convention(preset)
    if convention is not None:
        encoder.input_convention = convention
    return encoder


def check_encoder_name(preset):
    """Raises a `ValueError` unless `preset` (not one of this library's ResNets) names a
    keras-hub backbone preset (a built-in name, a directory or a handle such as
    `kaggle://...` or `hf://...`), suggesting close names; returns the `keras_hub` module.

    Example:
    ```python
    check_encoder_name("resnet_vd_50_imagenet")
    ```
    """
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            f"{preset!r} is not one of this library's ResNets ({', '.join(RESNET_ARCHITECTURES)}); "
            "keras-hub presets as encoders need keras-hub: `pip install keras-hub`."
        ) from error
    known = keras_hub.models.Backbone.presets
    if not isinstance(preset, str) or preset in known or "://" in preset or os.path.isdir(preset):
        return keras_hub
    import difflib

    close = difflib.get_close_matches(preset, [*RESNET_ARCHITECTURES, *known], n=3)
    raise ValueError(
        f"{preset!r} is neither one of this library's ResNets ({', '.join(RESNET_ARCHITECTURES)}) "
        "nor a keras-hub backbone preset (a built-in name such as resnet_vd_50_imagenet, a "
        "preset directory, or a kaggle:// or hf:// handle)"
        + (f"; did you mean {', '.join(close)}?" if close else ".")
    )


def keras_hub_input_convention(preset):
    """The normalisation a keras-hub preset's image converter applies, or None.

    keras-hub's converters take 0..255 RGB images and compute `x * scale +
    offset` (per channel or for all; None: 1 and 0); that is `(x - mean) / std`
    with `std = 1 / scale` and `mean = -offset / scale`, `AlignSeg`'s convention.
    None for a preset without `image_converter.json` (or whose loader has none).

    Example:
    ```python
    keras_hub_input_convention("resnet_50_imagenet")
    # {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375), "bgr": False}
    ```
    """
    import keras_hub

    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except FileNotFoundError:
        return None
    if converter is None:  # keras-hub's timm and transformers loaders, for some models
        return None
    scale = _per_channel(converter.scale, 1.0, "scale", preset)
    offset = _per_channel(converter.offset, 0.0, "offset", preset)
    if 0.0 in scale:
        raise ValueError(f"The image converter of {preset!r} scales a channel by 0.")
    return {
        "mean": tuple(-o / s for o, s in zip(offset, scale)),
        "std": tuple(1.0 / s for s in scale),
        "bgr": False,
    }


def _per_channel(value, default, name, preset):
    """A converter's `scale` or `offset` as three floats (R, G, B)."""
    values = [default] * 3 if value is None else np.ravel(np.asarray(value, "float64")).tolist()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"The image converter of {preset!r} has a {name} of {len(values)} "
                         "values; AlignSeg takes RGB images (3).")
    return tuple(float(v) for v in values)


def encoder_input_convention(image_encoder):
    """The input convention of an encoder: its own, or ImageNet RGB (keras-hub's default)."""
    convention = getattr(image_encoder, "input_convention", None)
    return dict(convention) if convention else dict(IMAGENET_RGB)


def _output_structure(model):
    """A functional model's outputs as given (a dict stays a dict), or None."""
    try:
        return model.output
    except (AttributeError, ValueError):  # a subclassed model not yet called
        return None


def pyramid_encoder_model(image_encoder):
    """`image_encoder` in a form its config restores, with its pyramid.

    A plain functional `keras.Model` whose `pyramid_outputs` was set as an
    attribute loses it when saved (its config holds the graph only): it becomes
    a functional model with the pyramid as its dict of outputs, on the same
    layers and weights. Other encoders (keras-hub's backbones, `ResNetEncoder`,
    models with four outputs) are returned as they are.
    """
    plain_functional = type(image_encoder).__name__ == "Functional" and type(
        image_encoder).__module__.startswith("keras.")
    pyramid = getattr(image_encoder, "pyramid_outputs", None)
    if not (plain_functional and pyramid):
        return image_encoder
    encoder = keras.Model(image_encoder.inputs, dict(pyramid), name=image_encoder.name)
    if getattr(image_encoder, "input_convention", None):  # read when the model is built
        encoder.input_convention = image_encoder.input_convention
    return encoder


def _pyramid(image_encoder):
    """The encoder's feature maps by key: `pyramid_outputs`, or four plain outputs."""
    pyramid = getattr(image_encoder, "pyramid_outputs", None)
    if pyramid:
        return dict(pyramid)
    if isinstance(image_encoder, keras.Model) and isinstance(_output_structure(image_encoder), dict):
        return dict(_output_structure(image_encoder))  # e.g. `pyramid_encoder_model`'s
    outputs = image_encoder.outputs if isinstance(image_encoder, keras.Model) else None
    if outputs and len(outputs) == 4:
        return {f"output_{index}": tensor for index, tensor in enumerate(outputs)}
    raise ValueError(
        "An AlignSeg image encoder must be a keras.Model with `pyramid_outputs` (a dict of "
        "feature maps, as keras-hub's FeaturePyramidBackbone) or with four outputs at "
        f"strides 4, 8, 16 and 32; received {type(image_encoder).__name__} "
        f"{getattr(image_encoder, 'name', '')!r}."
    )


def _probe_size(image_encoder):
    if len(image_encoder.inputs) != 1:
        raise ValueError(
            f"An AlignSeg image encoder takes one input, the images; {image_encoder.name!r} "
            f"takes {len(image_encoder.inputs)}."
        )
    shape = tuple(image_encoder.inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(
            f"An AlignSeg image encoder takes images (batch, height, width, channels); "
            f"{image_encoder.name!r} takes inputs of shape {shape}."
        )
    height, width = (size or STRIDE_PROBE_SIZE for size in shape[1:3])
    return height, width, shape[3]


def pyramid_strides(image_encoder):
    """The stride of each of the encoder's pyramid features, measured symbolically.

    Example:
    ```python
    pyramid_strides(ResNetEncoder("resnet18"))  # {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
    ```
    """
    pyramid = _pyramid(image_encoder)
    height, width, channels = _probe_size(image_encoder)
    probe_model = keras.Model(_image_input(image_encoder), pyramid)
    probe = keras.KerasTensor((1, height, width, channels))
    shapes = probe_model.compute_output_spec(probe)
    maps = {key: tuple(spec.shape) for key, spec in shapes.items() if len(spec.shape) != 4}
    if maps:
        raise ValueError(
            f"An AlignSeg image encoder's pyramid holds feature maps (batch, height, width, "
            f"channels); {image_encoder.name!r} gives {maps} for a "
            f"{height}x{width} image (token sequences, e.g. a ViT's, need reshaping into maps)."
        )
    return {
        key: 2 ** round(math.log2(height / spec.shape[1])) for key, spec in shapes.items()
    }


def pyramid_feature_model(image_encoder, name=None):
    """A `keras.Model` from the encoder's input to its maps at strides 4, 8, 16 and 32.

    Args:
        image_encoder: a `keras.Model` with `pyramid_outputs` (keras-hub's
            contract; keys `"P2".."P5"`, `"P1".."P4"` or any other, told
            apart by their measured stride), or a model with four outputs at
            strides 4..32.
        name: name of the returned model.

    Returns:
        A `keras.Model` whose output is the list `[F4, F8, F16, F32]`.

    Example:
    ```python
    features = pyramid_feature_model(ResNetEncoder("resnet18"))
    f4, f8, f16, f32 = features(np.zeros((1, 64, 64, 3), "float32"))
    ```
    """
    pyramid = _pyramid(image_encoder)
    strides = pyramid_strides(image_encoder)
    by_stride = {}
    for key, stride in strides.items():
        by_stride.setdefault(stride, key)
    missing = [stride for stride in PYRAMID_STRIDES if stride not in by_stride]
    if missing:
        found = ", ".join(f"{key}: stride {stride}" for key, stride in strides.items())
        raise ValueError(
            f"AlignSeg needs encoder features at strides 4, 8, 16 and 32; "
            f"{image_encoder.name!r} has none at stride {', '.join(map(str, missing))} "
            f"(its pyramid: {found})."
        )
    outputs = [pyramid[by_stride[stride]] for stride in PYRAMID_STRIDES]
    model = keras.Model(
        _image_input(image_encoder), outputs, name=name or f"{image_encoder.name}_pyramid"
    )
    policy = image_encoder.dtype_policy
    if type(policy) is keras.dtype_policies.DTypePolicy:  # not a quantized encoder's map
        model.dtype_policy = policy  # it runs the encoder's layers
    return model


def _image_input(image_encoder):
    inputs = image_encoder.inputs
    return inputs[0] if len(inputs) == 1 else inputs
