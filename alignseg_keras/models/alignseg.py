"""The AlignSeg segmenter (paper Fig. 2): a backbone, its heads and the paper's training recipe."""

import inspect
import os
import warnings

import keras

from alignseg_keras.backbones.encoders import RESNET_ARCHITECTURES
from alignseg_keras.backbones.encoders import ResNetEncoder
from alignseg_keras.backbones.encoders import encoder_input_convention
from alignseg_keras.backbones.encoders import keras_hub_encoder
from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import check_class_count
from alignseg_keras.checks import check_image_batch_shape
from alignseg_keras.checks import check_ignore_label
from alignseg_keras.checks import check_image_dtype
from alignseg_keras.config_utils import deserialized
from alignseg_keras.config_utils import freeze_layers
from alignseg_keras.config_utils import frozen_layers
from alignseg_keras.config_utils import global_dtype_policy
from alignseg_keras.config_utils import model_config
from alignseg_keras.config_utils import set_model_dtype_policy
from alignseg_keras.config_utils import warn_if_policy_differs
from alignseg_keras.config_utils import without_saved_policy
from alignseg_keras.export_formats import check_float32_computation
from alignseg_keras.layers.alignment import BilinearResize
from alignseg_keras.layers.alignment import portable_sampling
from alignseg_keras.layers.preprocessing import CropToReference
from alignseg_keras.layers.preprocessing import ImageNormalization
from alignseg_keras.layers.preprocessing import PadToMultiple
from alignseg_keras.layers.segmentation_head import SegmentationHead
from alignseg_keras.models import preset_files
from alignseg_keras.models.alignseg_backbone import OFFSET_MODULES
from alignseg_keras.models.alignseg_backbone import AlignSegBackbone
from alignseg_keras.models.image_segmenter import ImageSegmenter
from alignseg_keras.models.image_segmenter import StateKeepingModel
from alignseg_keras.models.image_segmenter import loss_ignore_label
from alignseg_keras.models.legacy import LEGACY_FILE_MESSAGE
from alignseg_keras.models.legacy import is_legacy_config
from alignseg_keras.models.presets import DEFAULT_ENCODER
from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES
from alignseg_keras.models.presets import preset_arguments

# The decoder's arguments and their defaults (AlignSegBackbone's), for a backbone
# built from an encoder.
DECODER_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(AlignSegBackbone.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty and name not in ("image_shape", "dtype")
}
# Keys of the training outputs with deep supervision.
LOGITS, AUX_LOGITS = "logits", "aux_logits"


class _Default:
    """The default of `AlignSeg(context=...)`: AlignSegBackbone's (None means no context)."""

    def __repr__(self):
        return "DEFAULT"


# Marks a decoder argument left to AlignSegBackbone's default where None is a
# value of its own (`context=None`: no context module).
DEFAULT = _Default()


def _should_sync_batchnorm(sync_batchnorm):
    if sync_batchnorm and keras.backend.backend() != "tensorflow":
        warnings.warn(
            "sync_batchnorm=True synchronises the replicas of a tf.distribute strategy, "
            f"which the {keras.backend.backend()} backend does not have: ignored (Keras' "
            "BatchNormalization refuses synchronized=True there, at the first training "
            "step). On JAX, keras.distribution.DataParallel computes the statistics over "
            "the whole global batch already.", stacklevel=4)
        return False
    if sync_batchnorm is not None:
        return bool(sync_batchnorm)
    from alignseg_keras.distribute import replicas_in_sync

    return replicas_in_sync() > 1


def synchronize_batchnorm(model):
    """Makes every BatchNormalization of `model` synchronise across replicas (TF)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _names_backbone_preset(backbone):
    """Whether `backbone` is a preset directory of this library (not a ResNet's name)."""
    return not (isinstance(backbone, str) and backbone in RESNET_ARCHITECTURES) and (
        preset_files.is_alignseg_backbone_preset(backbone))


def _image_encoder(backbone, image_encoder, backbone_weights, dtype):
    """The encoder to build a backbone on: `image_encoder`, or a ResNet (or keras-hub
    preset) by name, built in the dtype policy `dtype`."""
    if image_encoder is not None:
        if backbone is not None:
            raise ValueError(
                "Give either `backbone` or `image_encoder`, not both; received "
                f"backbone={backbone!r} and an image_encoder."
            )
        if backbone_weights is not None:
            raise ValueError("`backbone_weights` applies to ResNets named by `backbone`.")
        return image_encoder
    if backbone is None:
        backbone = DEFAULT_ENCODER
    if isinstance(backbone, os.PathLike):  # a keras-hub preset directory
        backbone = os.fspath(backbone)
    if isinstance(backbone, str) and backbone not in RESNET_ARCHITECTURES:
        if backbone_weights is not None:
            raise ValueError("`backbone_weights` applies to ResNets named by `backbone`.")
        return keras_hub_encoder(backbone, dtype=dtype)
    if isinstance(backbone, str):
        return ResNetEncoder(backbone, weights=backbone_weights, dtype=dtype)
    if isinstance(backbone, keras.Model):
        if backbone_weights is not None:
            raise ValueError("`backbone_weights` applies to ResNets named by `backbone`.")
        return backbone
    raise ValueError(
        "`backbone` must be an AlignSegBackbone, a ResNet name or an image encoder "
        f"(a keras.Model with `pyramid_outputs`); received {type(backbone).__name__}."
    )


def build_backbone(backbone=None, image_encoder=None, backbone_weights=None, dtype=None,
                   **decoder):
    """An `AlignSegBackbone` from `AlignSeg`'s convenience arguments.

    Args:
        backbone: an `AlignSegBackbone` (returned as it is; then no other
            argument may be given) or a preset directory of one (written by
            `AlignSeg.save_to_preset`: loaded with its weights), a ResNet name
            (`ResNetEncoder`), a keras-hub preset, a `keras.Model` image
            encoder, or None for `"resnet101"`.
        image_encoder: a `keras.Model` with `pyramid_outputs`, instead of `backbone`.
        backbone_weights: None or `"imagenet"` for a ResNet named by `backbone`.
        dtype: the dtype policy of the layers built here (None: the global one);
            a backbone or encoder given keeps its own (with a warning when it
            differs).
        **decoder: `AlignSegBackbone` arguments (`DECODER_DEFAULTS`); None
            values take the default, but for `context`, where None means no
            context module and `DEFAULT` takes the default.
    """
    given = {
        key: value
        for key, value in decoder.items()
        if value is not DEFAULT and (value is not None or key == "context")
    }
    unknown = sorted(set(given) - set(DECODER_DEFAULTS))
    if unknown:
        raise TypeError(f"Unknown decoder arguments: {', '.join(unknown)}.")
    if _names_backbone_preset(backbone):  # a preset of this library's
        with global_dtype_policy(dtype):  # rebuilt from its config, in the dtype asked
            backbone = AlignSegBackbone.from_preset(backbone)
    if isinstance(backbone, AlignSegBackbone):
        extra = sorted(given) + ["image_encoder"] * (image_encoder is not None)
        extra += ["backbone_weights"] * (backbone_weights is not None)
        if extra:
            raise ValueError(
                f"The AlignSegBackbone given already has its encoder and decoder; "
                f"{', '.join(extra)} cannot change them (build the AlignSegBackbone with them)."
            )
        warn_if_policy_differs(backbone, "backbone", dtype)
        return backbone
    encoder = _image_encoder(backbone, image_encoder, backbone_weights, dtype)
    return AlignSegBackbone(encoder, **{**DECODER_DEFAULTS, **given}, dtype=dtype)


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignSeg(ImageSegmenter):
    """AlignSeg: Feature-Aligned Segmentation Networks (Huang et al., TPAMI 2021).

    The segmenter: an image converter (mean, std, channel order), padding to a
    multiple of `pad_to_multiple`, an `AlignSegBackbone` (an image encoder and
    the paper's two bottom-up pathways with AlignFA, Eq. 1, and AlignCM,
    Eq. 3: see its docstring for the d1..d5 equations), a segmentation head on
    d5 and a deep-supervision head on d3, upsampled and cropped back to the
    input size.

    The model takes RGB images with values 0..255 (float or uint8) of any
    height and width: `model(x)` and `model.predict(x)` return logits
    `(B, H, W, num_classes)` at the input size. The deep-supervision logits
    exist for training only (`model(x, training=True)` returns `{"logits",
    "aux_logits"}`). `compile()` without arguments sets up the paper's recipe.
    `fit`, `evaluate` and `predict` check their data first, in one place
    (the base class, `ImageSegmenter`), and `fit` fits the poly schedule's
    length to the steps Keras counts (`PolyScheduleLength`). Of
    `keras.Model`'s methods, AlignSeg itself overrides `call` (the training
    outputs), `compile` (the paper's defaults; with `get_compile_config` and
    `compile_from_config`, which Keras asks of a custom `compile`, so that a
    `.keras` file keeps the compiled state), `compute_loss` (the
    deep-supervision loss) and `compute_metrics` (metrics of the main logits).

    Build it on a named ResNet, on any feature-pyramid encoder, or on a
    backbone you built:

    ```python
    model = AlignSeg(19, backbone="resnet18", decoder_channels=64)
    model = AlignSeg(19, image_encoder=keras_hub.models.ResNetBackbone.from_preset(...))
    model = AlignSeg(19, backbone=AlignSegBackbone(encoder, alignment="official"))
    model = AlignSeg.from_preset("alignseg_resnet101_official", num_classes=19)
    model = AlignSeg.from_preset("path/to/preset_dir")   # with its weights
    ```

    Args:
        num_classes: int, number of classes, 2 to 4096
            (`alignseg_keras.checks.MAX_CLASSES`); a binary task has 2.
        backbone: an `AlignSegBackbone`, or a preset directory holding one
            (`save_to_preset`'s: the backbone with its weights, under new
            heads; `from_preset` keeps the heads); or, to build one, a ResNet name
            (`"resnet18"`, `"resnet34"`, `"resnet50"`, `"resnet101"`,
            `"resnet50_deepstem"`, `"resnet101_deepstem"`), a keras-hub
            backbone preset name (e.g. `"resnet_vd_50_imagenet"`; needs
            keras-hub, downloads the preset with its weights) or a
            `keras.Model` image encoder; None builds on `"resnet101"`.
        image_encoder: a `keras.Model` with `pyramid_outputs` at strides 4..32
            (keras-hub's `FeaturePyramidBackbone` contract), to build the
            backbone on; instead of `backbone`.
        backbone_weights: None or `"imagenet"` (for `"resnet50"`/`"resnet101"`).
        decoder_channels, offset_channels, context_bins, context_merge,
            context_hidden_channels, alignment, activation: `AlignSegBackbone`
            arguments for a backbone built here (defaults in `DECODER_DEFAULTS`:
            256, as wide as the decoder, 3, `"sum"`, None, `"standard"`,
            `"relu"`); an error with a ready `AlignSegBackbone`. `activation`
            is the decoder's and heads' hidden activation, not the output
            activation of keras-hub's segmenters: AlignSeg returns logits.
        fusion, align_fa_offsets, context: the paper's ablations (Tables
            1-4), `AlignSegBackbone` arguments likewise (defaults `"align"`,
            `"both"`, `"align"`: the full model). `context=None` builds no
            context module; leaving `context` out keeps AlignCM.
        image_converter: an `ImageNormalization` layer (mean, std, channel
            order), or None for the encoder's own convention (ImageNet RGB for
            encoders that state none) with `mean`, `std`, `bgr` overriding it.
            keras-hub's `ImageConverter`s are not taken (they also resize): for
            one computing `x * scale + offset`, give `mean = -offset / scale`
            and `std = 1 / scale`.
        mean, std: RGB mean and std (0..255 scale) of a converter built here.
        bgr: bool, whether a converter built here feeds the encoder BGR.
        deep_supervision: bool, build the auxiliary head on d3.
        dropout: float, dropout rate of the heads (0.1).
        pad_to_multiple: int or None, pad inputs to a multiple of this (32);
            None processes the input size as it is (the authors' model), as an
            encoder that takes one image size, not a multiple of it, needs.
        sync_batchnorm: bool or None; None synchronises BatchNorm when the
            model is built inside a `tf.distribute` strategy with several replicas
            (and is saved as None: the model decides again where it is loaded).
            TensorFlow only: True is ignored with a warning on JAX (whose
            `DataParallel` statistics span the global batch) and torch.
        image_shape: image shape without the batch; None takes the backbone's
            (`(None, None, 3)`, any size, for this library's ResNets; a fixed
            size for encoders that need one, such as keras-hub's `MiTBackbone`).
        dtype: the dtype policy of every layer built here (e.g.
            `"mixed_bfloat16"`, as keras-hub's models take it); None takes
            Keras' global policy. The logits leave the model in float32
            either way. A backbone, encoder or image converter given keeps
            the policy it was built in (a warning says so when it differs).
            Not saved in the config: a loaded model computes in the policy of
            the process that loads it (`from_preset` takes `dtype=` too).
        name, trainable: `keras.Model` arguments.

    Example:
    ```python
    model = AlignSeg(num_classes=19, backbone="resnet18", decoder_channels=64)
    logits = model.predict(np.zeros((1, 97, 130, 3), "uint8"))  # (1, 97, 130, 19)
    ```
    """

    def __init__(
        self,
        num_classes,
        backbone=None,
        image_encoder=None,
        backbone_weights=None,
        decoder_channels=None,
        offset_channels=None,
        context_bins=None,
        context_merge=None,
        context_hidden_channels=None,
        alignment=None,
        fusion=None,
        align_fa_offsets=None,
        context=DEFAULT,
        activation=None,
        image_converter=None,
        mean=None,
        std=None,
        bgr=None,
        deep_supervision=True,
        dropout=0.1,
        pad_to_multiple=32,
        sync_batchnorm=None,
        image_shape=None,
        name="alignseg",
        dtype=None,
        trainable=True,
    ):
        num_classes = check_class_count(num_classes)
        pad_to_multiple = _checked_padding_multiple(pad_to_multiple)
        if image_shape is not None:
            _check_rgb(image_shape)
        sync = _should_sync_batchnorm(sync_batchnorm)
        # A preset directory's backbone comes with the normalisation its weights learnt on.
        preset_convention = (preset_files.task_input_convention(backbone)
                             if image_converter is None and _names_backbone_preset(backbone)
                             else {})
        backbone = build_backbone(
            backbone,
            image_encoder,
            backbone_weights,
            decoder_channels=decoder_channels,
            offset_channels=offset_channels,
            context_bins=context_bins,
            context_merge=context_merge,
            context_hidden_channels=context_hidden_channels,
            alignment=alignment,
            fusion=fusion,
            align_fa_offsets=align_fa_offsets,
            context=context,
            activation=activation,
            dtype=dtype,
        )
        if image_shape is None:
            image_shape = _check_rgb(backbone.image_shape)
        _check_padding_of_a_fixed_size(backbone.image_shape, pad_to_multiple)
        image_converter = _image_converter(
            image_converter, {**encoder_input_convention(backbone.image_encoder),
                              **preset_convention}, mean, std, bgr, dtype
        )
        heads = {
            name: SegmentationHead(
                num_classes,
                backbone.decoder_channels,
                dropout,
                activation=backbone.activation,
                dtype=dtype,
                name=name,
            )
            for name in ("head", "auxiliary_head")[: 1 + bool(deep_supervision)]
        }

        # === Functional model ===
        images = keras.Input(image_shape, name="images")
        x = image_converter(images)
        if pad_to_multiple:
            x = PadToMultiple(pad_to_multiple, dtype=dtype, name="pad")(x)
        features = backbone(x)

        def logits_at_input_size(head, stream):
            logits = heads[head](features[stream])
            # Logits leave the model in float32, also under mixed precision.
            upsample = BilinearResize(True, dtype="float32", name=f"{head}_upsample")
            logits = upsample([logits, x])
            return CropToReference(dtype="float32", name=f"{head}_crop")([logits, images])

        outputs = logits_at_input_size("head", "d5")
        if deep_supervision:
            aux_logits = logits_at_input_size("auxiliary_head", "d3")
            outputs = {LOGITS: outputs, AUX_LOGITS: aux_logits}
        super().__init__(
            inputs=images, outputs=outputs, name=name, trainable=trainable
        )
        set_model_dtype_policy(self, dtype)
        # Shape checks happen in `call`, with a clear message.
        self.input_spec = None

        # === Config ===
        self.num_classes = num_classes
        self.backbone = backbone
        self.image_converter = image_converter
        self.deep_supervision = bool(deep_supervision)
        self.dropout = float(dropout)
        self.pad_to_multiple = pad_to_multiple
        self.sync_batchnorm = sync  # resolved; the config keeps the argument as given
        self._sync_batchnorm_argument = sync_batchnorm
        self.image_shape = tuple(image_shape)
        # The offset fields of the alignment modules the backbone has (all of
        # OFFSET_MODULES for the full model; fewer, or none, for ablations).
        self.offset_outputs = {
            module: features[module] for module in OFFSET_MODULES if module in features
        }
        if sync:
            synchronize_batchnorm(self)

    @property
    def image_encoder(self):
        """The backbone's image encoder (e.g. a `ResNetEncoder`)."""
        return self.backbone.image_encoder

    @property
    def normalization(self):
        """The image converter's mean, std (RGB, 0..255) and channel order, as a dict."""
        converter = self.image_converter
        return {"mean": list(converter.mean), "std": list(converter.std), "bgr": converter.bgr}

    def call(self, inputs, training=None, mask=None):
        if isinstance(inputs, dict):  # keyed by the input's name, as Keras' functional models take
            inputs = _images_of_dict(inputs, self.inputs[0].name)
        if isinstance(inputs, (list, tuple)):  # Keras reads a list as one input per item
            raise ValueError(
                f"AlignSeg takes one batch of images, an array (batch, height, width, 3); "
                f"received {len(inputs)} arrays (a list or tuple). Stack images of one "
                "size (np.stack(images)); predict images of other sizes one at a time "
                "(model.predict(image[None])).")
        check_image_batch_shape(getattr(inputs, "shape", None), self.image_shape[:2])
        check_image_dtype(getattr(inputs, "dtype", None))
        outputs = super().call(inputs, training=training, mask=mask)
        if isinstance(outputs, dict) and not training:
            return outputs[LOGITS]
        return outputs

    def compute_output_spec(self, inputs, training=None, mask=None):
        """The logits' spec, for the model called on `keras.Input`s (nested in another
        model). A model with deep supervision is refused there: it returns the dict of
        both heads' logits in training and the logits alone otherwise, which a model
        around it cannot follow (its `predict` failed inside Keras, and its `fit` trained
        the auxiliary head alone). Calling it with `training=False` does not help: the
        outer model's `fit` still runs it in training (measured: the loss took the
        auxiliary logits)."""
        if self.deep_supervision:
            raise ValueError(
                f"{self.name} has deep supervision (two heads' logits in training, one "
                "otherwise) and cannot be called inside another model. Build it with "
                "`deep_supervision=False` to nest it: AlignSeg(..., deep_supervision=False), "
                "AlignSeg.from_preset(..., deep_supervision=False), or load a trained "
                "model's weights into one with `load_weights`.")
        return super().compute_output_spec(inputs, training=training, mask=mask)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras' `load_weights`, each head taking its own weights.

        A file of the model with deep supervision (two heads) loads into one
        without (or back): Keras' weights files match layers by class and
        order, not by name, so `head` took the auxiliary head's weights,
        silently. The file is loaded into a model with the file's heads, and
        each weight copied by name; an added auxiliary head keeps its fresh
        weights.

        Example:
        ```python
        deploy = AlignSeg(19, backbone="resnet18", deep_supervision=False)
        deploy.load_weights("trained.weights.h5")  # saved with deep supervision
        ```
        """
        saved_heads = preset_files.saved_head_count(filepath)
        if saved_heads not in (1, 2) or saved_heads == 1 + self.deep_supervision:
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        twin = type(self).from_config({**self.get_config(), "deep_supervision": saved_heads == 2})
        twin.load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        self.backbone.set_weights(twin.backbone.get_weights())
        _copy_task_weights(twin, self, keep_classifiers=True)
        return None

    def compile(
        self,
        optimizer=None,
        loss=None,
        metrics=None,
        aux_loss_weight=0.4,
        aux_loss=None,
        learning_rate=1e-2,
        total_steps=None,
        warmup_steps=0,
        weight_decay=1e-4,
        ignore_index=IGNORE_INDEX,
        **kwargs,
    ):
        """Configures training; each of `optimizer`, `loss` and `metrics` falls
        back to the paper's recipe when left out (None, or "auto" as keras-hub's
        tasks take it).

        Under a mixed-precision policy with no fast path on this machine
        (bfloat16 on a CPU without bfloat16 units, where a TensorFlow training
        step is about 9x slower than in float32; float16 without a GPU) it warns
        once per process (`hardware.warn_once`).

        Args:
            optimizer: a Keras optimizer, or None for SGD with momentum 0.9,
                weight decay `weight_decay` and poly decay (power 0.9) from
                `learning_rate`, with `warmup_steps` of linear warm-up.
            loss: a Keras loss on (labels, logits), or None for
                `SegmentationCrossEntropy(ignore_index)`. With deep supervision the
                total is `loss(y, logits) + aux_loss_weight * aux_loss(y, aux_logits)`.
            metrics: a list of metrics, or None for `MeanIoU(num_classes)` ignoring
                the loss's `ignore_index` (or `ignore_index` for a loss without one),
                compiled as a weighted metric (beside any `weighted_metrics` given,
                unless they hold a `MeanIoU`): `fit`/`evaluate`'s `sample_weight`
                reaches it. Keras gives the weights only to `weighted_metrics`, not to
                metrics passed here.
            aux_loss_weight: float, weight of the deep-supervision loss (0.4).
            aux_loss: a `keras.losses.Loss` for the deep-supervision head, or
                None for `loss` itself. The authors' criteria give that head plain
                cross-entropy whatever the main head's loss (docs/training.md,
                "The authors' criteria"): e.g. `loss=OhemCrossEntropy(),
                aux_loss=SegmentationCrossEntropy()`.
            learning_rate: float, base rate of the default optimizer (1e-2).
            total_steps: int or None, steps of the poly schedule (a fixed plan);
                None lets every `fit` extend the schedule over its own epochs and
                steps, starting from the current iteration, and keeps the rate
                constant before any `fit` (`train_on_batch`, custom loops). See
                `alignseg_keras.optimizers.WarmupPolynomialDecay`.
            warmup_steps: int, linear warm-up steps of the default optimizer.
            weight_decay: float, PyTorch-style weight decay of the default optimizer.
            ignore_index: int, label ignored by the default loss, and by the
                default metric when the loss has no `ignore_index` of its own.
            **kwargs: other `keras.Model.compile` arguments (`jit_compile`, ...).
        """
        from alignseg_keras.hardware import warn_once
        from alignseg_keras.losses import SegmentationCrossEntropy
        from alignseg_keras.metrics import MeanIoU
        from alignseg_keras.optimizers import paper_sgd

        # bfloat16 on a CPU without bfloat16 units trains ~9x slower on TensorFlow.
        warn_once(self.dtype_policy.name)
        optimizer, loss, metrics = (
            None if isinstance(value, str) and value == "auto" else value
            for value in (optimizer, loss, metrics)
        )
        if optimizer is None:
            optimizer = paper_sgd(
                learning_rate, total_steps, warmup_steps, weight_decay=weight_decay
            )
        else:
            _warn_schedule_unused(learning_rate=learning_rate, total_steps=total_steps,
                                  warmup_steps=warmup_steps, weight_decay=weight_decay)
        if loss is None:
            loss = SegmentationCrossEntropy(ignore_index=ignore_index)
        ignored = loss_ignore_label(loss, default=ignore_index)
        for label in (ignored, loss_ignore_label(aux_loss, default=None)):
            self._check_ignore_label(label)
        if metrics is None:
            # Ignoring what the loss ignores; a weighted metric, which Keras gives the
            # sample weights (as the loss: pixels of weight 0 are left out), beside the
            # user's weighted metrics unless they hold a MeanIoU.
            metrics = []
            weighted = list(kwargs.get("weighted_metrics") or [])
            if not any(isinstance(metric, MeanIoU) for metric in weighted):
                weighted.append(MeanIoU(
                    self.num_classes, ignore_index=ignore_index if ignored is None else ignored))
            kwargs["weighted_metrics"] = weighted
        self.aux_loss_weight = float(aux_loss_weight) if self.deep_supervision else 0.0
        self.aux_loss = _checked_aux_loss(aux_loss)
        # Saved as given (get_compile_config): Keras saves "auto" resolved for the
        # backend at hand, which another backend then reads as the user's choice.
        kwargs.setdefault("jit_compile", "auto")
        self._jit_compile_argument = False if kwargs.get("run_eagerly") else kwargs["jit_compile"]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self._jit_compile_resolved = self.jit_compile  # a later `model.jit_compile = x` is saved
        if self.built:
            # The optimizer's state now, as Keras does on JAX and under a
            # tf.distribute strategy: on TensorFlow without one, Keras creates it
            # while tracing the first training step, and the traced step then
            # peaks 0.16-0.34 GiB higher (512x512, batch 2, docs/benchmarks.md).
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        """Keras' compile config, with `jit_compile` as `compile` was given it.

        Keras saves the value "auto" resolved to on the saving backend: True on
        JAX, which torch reads as `torch.compile` (not supported here: it crashed
        inside dynamo on read-only NumPy images and took 42 s for a first
        `predict`), False on TensorFlow without a GPU, which JAX reads as not
        jitting at all. "auto" is resolved again where the file loads. A value set
        since (`model.jit_compile = True`) is saved as set.
        """
        config = super().get_compile_config()
        if config:
            config["jit_compile"] = getattr(self, "_jit_compile_argument", config.get("jit_compile"))
            if self.jit_compile != getattr(self, "_jit_compile_resolved", self.jit_compile):
                config["jit_compile"] = self.jit_compile  # set since `compile`: the user's
            config["aux_loss_weight"] = self.aux_loss_weight
            aux_loss = getattr(self, "aux_loss", None)
            if aux_loss is not None:
                config["aux_loss"] = keras.saving.serialize_keras_object(aux_loss)
        return config

    def compile_from_config(self, config):
        """Restores the compiled state saved in a `.keras` file (optimizer included).

        On torch a saved `jit_compile=True` loads as "auto" (eager): files of
        earlier versions stored JAX's resolved True, and torch would hand every
        step to `torch.compile`, which this library does not support (docs/torch.md).
        """
        config = keras.saving.deserialize_keras_object(config)
        if keras.backend.backend() == "torch" and config.get("jit_compile") is True:
            warnings.warn(
                "This model was saved with jit_compile=True (on JAX, or asked for); on torch "
                "that is torch.compile, which alignseg_keras does not support: it loads "
                "with jit_compile='auto' (eager). Set model.jit_compile = True to insist.",
                stacklevel=2,
            )
            config["jit_compile"] = "auto"
        self._restoring_compiled_state = True
        try:
            self.compile(**config)
        finally:
            self._restoring_compiled_state = False

    def _check_ignore_label(self, label):
        """`checks.check_ignore_label`; a warning where a `.keras` file's compiled state is
        restored (files of earlier versions hold such a state, and must still load)."""
        try:
            check_ignore_label(label, self.num_classes)
        except ValueError as error:
            if not getattr(self, "_restoring_compiled_state", False):
                raise
            warnings.warn(f"{error} This file was compiled so; it loads as saved: compile it "
                          "again before training.", stacklevel=4)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss on the main logits, plus the weighted deep-supervision loss."""
        aux_logits = None
        if isinstance(y_pred, dict):
            aux_logits = y_pred.get(AUX_LOGITS)
            y_pred = y_pred[LOGITS]
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        weight = getattr(self, "aux_loss_weight", 0.0)
        aux_loss = getattr(self, "aux_loss", None)
        if aux_loss is None:
            aux_loss = self._compile_loss
        if aux_logits is not None and weight and aux_loss is not None:
            loss = loss + weight * aux_loss(y, aux_logits, sample_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred[LOGITS]
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def offset_model(self):
        """A `keras.Model` from images to the offset field of every alignment module
        (on the model's own layers; its loops keep them when they fail on JAX).

        Its outputs are a dict keyed by module name (`align_fa2` ... `align_fa5`,
        `align_cm`); AlignFA fields have 4 channels (Delta_F, then Delta_A) and
        the AlignCM field 2, at stride 4 (AlignCM at stride 32) of the padded input.
        Ablated models have only the modules that predict offsets
        (`model.backbone.offset_modules`); an AlignFA that aligns one side
        (`align_fa_offsets`) has that side's 2 channels. A model without any
        alignment module (`fusion` other than `"align"` and `context` other
        than `"align"`) raises a ValueError.
        """
        if not self.offset_outputs:
            backbone = self.backbone
            raise ValueError(
                "This AlignSeg has no alignment module, hence no offsets: its backbone "
                f"has fusion={backbone.fusion!r} and context={backbone.context!r}."
            )
        # A plain dict: the tracked one is no JAX type, and `predict` failed on JAX. Its
        # loops keep the shared variables on JAX when they fail (`StateKeepingModel`).
        return StateKeepingModel(self.inputs[0], dict(self.offset_outputs),
                                 name=f"{self.name}_offsets")

    @classmethod
    def from_preset(cls, preset, num_classes=None, load_weights=True, **kwargs):
        """A named configuration, or a preset directory with its weights.

        Args:
            preset: a name from `alignseg_keras.models.presets.PRESETS` (e.g.
                `"alignseg_resnet101_official"`, the authors' released network,
                or `"alignseg_resnet18_small"`; architectures without weights),
                or a directory written by `save_to_preset` (or `alignseg
                convert`), keras-hub's layout, whose weights are loaded; or
                that of a backbone alone (`AlignSegBackbone.save_to_preset`),
                on which new heads start fresh.
            num_classes: int or None. None keeps the preset directory's
                classes (19 for a name; required for a backbone alone). A
                different number loads every weight of the directory but the
                heads' 1 x 1 classifiers, which start fresh, for fine-tuning on
                other classes (as `convert.load_official_checkpoint` does; keras-hub
                tasks drop all of their own weights there).
            load_weights: bool, load a preset directory's weights.
            **kwargs: `AlignSeg` arguments overriding the preset (for a
                directory, those of the segmenter, e.g. `pad_to_multiple`;
                `mean`, `std` and `bgr`, which replace those of its image
                converter; and `dtype`, the policy every layer computes in:
                the directory's weights load into it).

        Example:
        ```python
        model = AlignSeg.from_preset("alignseg_resnet101_official", num_classes=19)
        model.save_to_preset("my_preset")
        same = AlignSeg.from_preset("my_preset")
        ```
        """
        if num_classes is not None:  # 0 is not "keep the preset's"
            num_classes = check_class_count(num_classes)
        if preset_files.is_backbone_only_preset(preset):
            return cls._from_backbone_preset(preset, num_classes, load_weights, kwargs)
        if preset_files.is_preset_directory(preset):
            dtype = kwargs.pop("dtype", None)
            with global_dtype_policy(dtype):  # the backbone is rebuilt from its config
                return cls._from_preset_directory(preset, num_classes, load_weights, kwargs)
        arguments = preset_arguments(preset, kwargs)
        return cls(DEFAULT_NUM_CLASSES if num_classes is None else num_classes, **arguments)

    @classmethod
    def _from_backbone_preset(cls, directory, num_classes, load_weights, arguments):
        """New heads of `num_classes` on the backbone of a backbone's preset alone."""
        if num_classes is None:
            raise ValueError(
                f"{os.fspath(directory)!r} is the preset of an AlignSegBackbone alone, without "
                "heads or classes: give `num_classes` (AlignSeg.from_preset(directory, "
                "num_classes=N)); the heads start fresh."
            )
        if not load_weights:
            with global_dtype_policy(arguments.get("dtype")):
                directory = AlignSegBackbone.from_preset(directory, load_weights=False)
        return cls(num_classes, backbone=directory, **arguments)

    @classmethod
    def _from_preset_directory(cls, directory, num_classes, load_weights, overrides):
        config = dict(preset_files.load_task_config(directory)["config"])
        overrides = _converter_overrides(config["image_converter"], overrides)
        saved_classes = config.pop("num_classes")
        new_heads = num_classes is not None and num_classes != saved_classes
        not_task_level = sorted(set(overrides) - (set(config) - {"backbone", "frozen_layers"}))
        if not_task_level:
            allowed = ", ".join(sorted(set(config) - {"backbone", "frozen_layers"}))
            raise ValueError(
                f"A preset directory fixes its backbone; {', '.join(not_task_level)} cannot "
                f"override it. Arguments that may: {allowed}."
            )
        saved_deep_supervision = config.get("deep_supervision")
        config.update(overrides)
        config["backbone"] = preset_files.load_backbone(directory, load_weights)
        config["num_classes"] = saved_classes if num_classes is None else num_classes
        model = cls.from_config(config)
        if not load_weights:
            return model
        if not new_heads and config.get("deep_supervision") == saved_deep_supervision:
            preset_files.load_task_weights(model, directory)
            return model
        # Keras' weights files match layers by class and order, not by name, and need
        # the saved shapes: load them into the model as saved, then copy what both have.
        saved = cls.from_config({**config, "num_classes": saved_classes,
                                 "deep_supervision": saved_deep_supervision})
        preset_files.load_task_weights(saved, directory)
        _copy_task_weights(saved, model, keep_classifiers=not new_heads)
        return model

    def save_to_preset(self, directory, description=None):
        """Writes the model to a preset directory in keras-hub's layout.

        `config.json` and `model.weights.h5` hold the backbone, `task.json` and
        `task.weights.h5` the segmenter and its heads, `metadata.json` the
        versions, parameter count and `description`. The directory is written
        beside its place and renamed into it: an earlier preset there is
        replaced, and a crash leaves it as it was. A directory holding other
        files (a README added for an upload, say), or without a preset's
        `config.json`, `task.json` and `metadata.json`, is refused with a
        `ValueError` naming them, rather than deleted with the old preset.

        Example:
        ```python
        model.save_to_preset("alignseg_cityscapes")
        model = AlignSeg.from_preset("alignseg_cityscapes")
        ```
        """
        preset_files.save_task_preset(self, directory, description)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Keras' `Model.export`, tracing the sampling every format can run.

        TensorFlow's fused sampling kernel (`CropAndResize`) is kept for
        `"tf_saved_model"` only: the other formats trace the gathers
        (`portable_sampling`; a LiteRT file with the fused kernel needs
        TensorFlow's Flex ops, which the plain interpreter lacks). ONNX and
        LiteRT files need a model computing in float32 (a ValueError
        otherwise). Without `input_signature` they take float32 images of the
        model's size (any size where it takes any), as `export_model` writes them
        (Keras' ONNX export refused a model loaded and never called). For TF
        Serving, `alignseg_keras.export.export_saved_model` writes the serving
        signatures (uint8 images in, labels out).

        Example:
        ```python
        model.export("alignseg.tflite", format="litert")
        ```
        """
        if format == "tf_saved_model":
            if keras.backend.backend() == "jax":
                # jax2tf traced gradient functions too, which failed on the symbolic
                # padding of images of any size (an inference export needs none).
                kwargs["jax2tf_kwargs"] = {"with_gradient": False,
                                           **(kwargs.get("jax2tf_kwargs") or {})}
            return super().export(filepath, format, verbose, input_signature, **kwargs)
        check_float32_computation(self, format)  # ONNX and LiteRT only
        if input_signature is None:  # Keras' ONNX export refused a model never called
            from alignseg_keras.inference import float_image_signature

            input_signature = float_image_signature(self, self.inputs[0].name)
        with portable_sampling():
            return super().export(filepath, format, verbose, input_signature, **kwargs)

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "image_converter": without_saved_policy(
                keras.saving.serialize_keras_object(self.image_converter)
            ),
            "deep_supervision": self.deep_supervision,
            "dropout": self.dropout,
            "pad_to_multiple": self.pad_to_multiple,
            # None stays None: a model saved inside a multi-replica strategy then loads
            # unsynchronised on one device, on JAX and on torch (where Keras has none).
            "sync_batchnorm": self._sync_batchnorm_argument,
            "image_shape": self.image_shape,
            **model_config(self),
            "frozen_layers": frozen_layers(self),
        }

    @classmethod
    def from_config(cls, config):
        if is_legacy_config(config):
            raise ValueError(LEGACY_FILE_MESSAGE)
        config = dict(config)
        frozen = config.pop("frozen_layers", [])
        if isinstance(config.get("image_converter"), dict):  # files of earlier versions
            config["image_converter"] = without_saved_policy(config["image_converter"])
        model = cls(**deserialized(config, ["backbone", "image_converter"]))
        freeze_layers(model, frozen)
        return model


def _warn_schedule_unused(**given):
    """Warns about the arguments of the default optimizer given with another optimizer:
    they were dropped without a word (`compile(optimizer="adam", learning_rate=1e-3)`
    trained at Adam's default rate)."""
    defaults = inspect.signature(AlignSeg.compile).parameters
    changed = [f"{name}={value!r}" for name, value in given.items()
               if value != defaults[name].default]
    if changed:
        warnings.warn(
            f"compile(optimizer=...) with {', '.join(changed)}: these configure the default "
            "SGD only; the optimizer given keeps its own settings (give it the learning "
            "rate, e.g. keras.optimizers.Adam(learning_rate=...), or "
            "optimizers.paper_sgd(...) for the paper's schedule).", stacklevel=3)


def _copy_task_weights(saved, model, keep_classifiers):
    """Copies the weights of `saved`'s layers outside the backbone into `model`'s layers
    of the same names. Without `keep_classifiers` (other classes), each head's 1 x 1
    classifier keeps its fresh weights and its hidden convolution and norm are copied, as
    `convert.load_official_checkpoint(num_classes=N)` loads the authors' heads. A head
    `model` has and `saved` lacks (an added auxiliary head) keeps its fresh weights."""
    names = {layer.name for layer in model.layers}
    for layer in saved.layers:
        if not layer.weights or layer is saved.backbone or layer.name not in names:
            continue
        target = model.get_layer(layer.name)
        if not keep_classifiers and isinstance(layer, SegmentationHead):
            layer, target = layer.hidden, target.hidden
        target.set_weights(layer.get_weights())


def _converter_overrides(saved_converter, overrides):
    """`overrides` of a preset directory with `mean`, `std` and `bgr` (the image
    converter's arguments, as `AlignSeg` takes them) turned into an `image_converter`
    override: the saved converter with those values."""
    overrides = dict(overrides)
    values = {key: overrides.pop(key) for key in ("mean", "std", "bgr") if key in overrides}
    values = {key: value for key, value in values.items() if value is not None}
    if not values:
        return overrides
    if overrides.get("image_converter") is not None:
        raise ValueError(f"Give either `image_converter` or {', '.join(values)}, not both.")
    overrides["image_converter"] = {
        **saved_converter, "config": {**saved_converter["config"], **values}
    }
    return overrides


def _check_padding_of_a_fixed_size(encoder_shape, pad_to_multiple):
    """Raises a `ValueError` when the encoder takes one image size that padding to
    `pad_to_multiple` would change (Keras would refuse the padded images)."""
    sizes = tuple(encoder_shape)[:2]
    if pad_to_multiple and any(size is not None and size % pad_to_multiple for size in sizes):
        shown = "x".join("?" if size is None else str(size) for size in sizes)
        raise ValueError(
            f"AlignSeg: the image encoder takes images of {shown} pixels only, which padding "
            f"to a multiple of pad_to_multiple={pad_to_multiple} would change; pass "
            "pad_to_multiple=None (the images then reach the encoder as they are)."
        )


def _check_rgb(image_shape):
    if tuple(image_shape)[-1] != 3:
        raise ValueError(
            f"AlignSeg takes RGB images with 3 channels; image_shape={image_shape!r}."
        )
    return tuple(image_shape)


def _images_of_dict(inputs, name):
    """The images of a dict input `{name: images}`, or a `ValueError` naming the keys."""
    if list(inputs) != [name]:
        raise ValueError(
            f"AlignSeg takes one input, the images: an array, or a dict {{{name!r}: images}}; "
            f"received a dict with the keys {sorted(map(str, inputs))}."
        )
    return inputs[name]


def _checked_padding_multiple(pad_to_multiple):
    """`pad_to_multiple` as a positive int; None, 0 and False (no padding) stay as given.

    A whole number given as a float or text (which earlier versions saved as
    given, and padded to) is read as that int.
    """
    if pad_to_multiple is None or pad_to_multiple is False or pad_to_multiple == 0:
        return pad_to_multiple
    try:
        multiple = int(pad_to_multiple)
        whole = not isinstance(pad_to_multiple, bool) and float(pad_to_multiple) == multiple
    except (TypeError, ValueError):
        whole = False
    if not whole or multiple < 1:
        raise ValueError(
            "AlignSeg: `pad_to_multiple` must be a positive int (32: the encoder's stride) or "
            f"None for no padding; received {pad_to_multiple!r}."
        )
    return multiple


def _checked_aux_loss(aux_loss):
    """`compile`'s `aux_loss`: None (the main loss) or a `keras.losses.Loss`."""
    if aux_loss is None or isinstance(aux_loss, keras.losses.Loss):
        return aux_loss
    raise ValueError(
        "AlignSeg.compile: `aux_loss` must be None (the main loss) or a keras.losses.Loss "
        f"such as alignseg_keras.losses.SegmentationCrossEntropy(); received {aux_loss!r}."
    )


def _image_converter(image_converter, convention, mean, std, bgr, dtype):
    """The converter given, or one in `dtype` with `convention` (the encoder's, or the
    preset's) and the overrides."""
    overrides = {key: value for key, value in (("mean", mean), ("std", std), ("bgr", bgr))
                 if value is not None}
    if image_converter is not None:
        if overrides:
            raise ValueError(
                f"Give either `image_converter` or {', '.join(overrides)}, not both."
            )
        if not isinstance(image_converter, ImageNormalization):
            raise ValueError(
                "`image_converter` must be an ImageNormalization layer; received "
                f"{type(image_converter).__name__}."
            )
        warn_if_policy_differs(image_converter, "image converter", dtype)
        return image_converter
    convention = {**convention, **overrides}
    return ImageNormalization(**convention, dtype=dtype, name="normalization")
