"""The AlignSeg segmentation model (paper Fig. 2)."""

import keras
import numpy as np

from alignseg_keras.backbones import default_normalization
from alignseg_keras.backbones import get_backbone
from alignseg_keras.layers.align_cm import AlignCM
from alignseg_keras.layers.align_fa import AlignFA
from alignseg_keras.layers.alignment import ALIGNMENT_MODES
from alignseg_keras.layers.alignment import BilinearResize
from alignseg_keras.layers.preprocessing import CropToReference
from alignseg_keras.layers.preprocessing import ImageNormalization
from alignseg_keras.layers.preprocessing import PadToMultiple
from alignseg_keras.layers.residual_conv_block import ResidualConvBlock
from alignseg_keras.layers.segmentation_head import SegmentationHead
from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import check_class_count
from alignseg_keras.models.data_checks import checked_data
from alignseg_keras.models.data_checks import checked_validation_data
from alignseg_keras.models.data_checks import data_errors
from alignseg_keras.models.data_checks import is_empty_array
from alignseg_keras.models.data_checks import shuffles_itself
from alignseg_keras.models.presets import preset_arguments
from alignseg_keras.models.training import count_training_steps
from alignseg_keras.models.training import require_training_data
from alignseg_keras.models.training import resolve_poly_schedule

# Keys of `AlignSeg.offset_model()` outputs: every alignment module.
OFFSET_MODULES = ("align_fa2", "align_fa3", "align_fa4", "align_cm", "align_fa5")


def _should_sync_batchnorm(sync_batchnorm):
    if sync_batchnorm is not None:
        return bool(sync_batchnorm)
    if keras.backend.backend() != "tensorflow":
        return False
    from alignseg_keras.distribute import replicas_in_sync

    return replicas_in_sync() > 1


def synchronize_batchnorm(model):
    """Makes every BatchNormalization of `model` synchronise across replicas (TF)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


@keras.saving.register_keras_serializable(package="alignseg_keras")
class AlignSeg(keras.Model):
    """AlignSeg: Feature-Aligned Segmentation Networks (Huang et al., TPAMI 2021).

    A ResNet backbone and two bottom-up pathways (paper Fig. 2): the first
    refines each backbone stage with a Residual Conv Block (RCB) and fuses it
    into the stride-4 stream with AlignFA (Eq. 1); the second pools context with
    AlignCM (Eq. 3) and fuses it the same way. A deep-supervision head on the
    third fused feature helps training. With d1..d5 the stride-4 streams:

        d1 = RCB1a(x1)
        d2 = RCB2b(AlignFA2(d1, RCB2a(x2)))
        d3 = RCB3b(AlignFA3(d2, RCB3a(x3)))      aux = auxiliary_head(d3)
        d4 = RCB4b(AlignFA4(d3, RCB4a(x4)))
        d5 = RCB5b(AlignFA5(d4, RCB5a(AlignCM(x4))))
        logits = head(d5)

    The model takes RGB images with values 0..255 (float or uint8) of any
    height and width, normalises them inside, pads them to a multiple of
    `pad_to_multiple` and crops the logits back: `model(x)` and
    `model.predict(x)` return logits `(B, H, W, num_classes)` at the input
    size. The deep-supervision logits exist for training only (`model(x,
    training=True)` returns `{"logits", "aux_logits"}`); prediction returns the
    main logits alone.

    Args:
        num_classes: int, number of classes, 2 to 4096
            (`alignseg_keras.checks.MAX_CLASSES`); a binary task has 2.
        backbone: `"resnet18"`, `"resnet34"`, `"resnet50"`, `"resnet101"`,
            `"resnet50_deepstem"`, `"resnet101_deepstem"`, or a `keras.Model`
            from images to four feature maps at strides 4, 8, 16 and 32.
        backbone_weights: None or `"imagenet"` (for `"resnet50"`/`"resnet101"`).
        decoder_channels: int, channels of every decoder stream (256).
        context_bins: int, AlignCM pooled grid size K (3).
        context_merge: `"sum"` (the authors' code) or `"concat"` (paper Eq. 3).
        context_hidden_channels: int or None, AlignCM 1x1 conv channels; None
            keeps the backbone's stride-32 channels (2048 for ResNet-101).
        alignment: `"standard"` (paper Eq. 2) or `"official"` (the authors'
            released sampler), see `AlignmentLayer`.
        deep_supervision: bool, build the auxiliary head on d3.
        activation: `"relu"` (paper) or `"leaky_relu"` (the code's InPlaceABN).
        dropout: float, dropout rate of the heads (0.1).
        mean, std: RGB mean and std (0..255 scale); None uses the backbone's
            convention (ImageNet mean/std, or Caffe-style BGR mean for the
            `keras.applications` ResNets and the authors' mean for deep stems).
        bgr: bool or None, feed the backbone BGR; None follows the backbone.
        pad_to_multiple: int or None, pad inputs to a multiple of this (32);
            None processes the input size as it is (the authors' model).
        sync_batchnorm: bool or None; None synchronises BatchNorm when the
            model is built inside a `tf.distribute` strategy with several replicas.
        input_shape: image shape, `(None, None, 3)` by default.
        name: model name.

    Example:
    ```python
    model = AlignSeg(num_classes=19, backbone="resnet18", decoder_channels=64)
    logits = model.predict(np.zeros((1, 97, 130, 3), "uint8"))  # (1, 97, 130, 19)
    ```
    """

    def __init__(
        self,
        num_classes,
        backbone="resnet101",
        backbone_weights=None,
        decoder_channels=256,
        context_bins=3,
        context_merge="sum",
        context_hidden_channels=None,
        alignment="standard",
        deep_supervision=True,
        activation="relu",
        dropout=0.1,
        mean=None,
        std=None,
        bgr=None,
        pad_to_multiple=32,
        sync_batchnorm=None,
        input_shape=(None, None, 3),
        name="alignseg",
        **kwargs,
    ):
        num_classes = check_class_count(num_classes)
        if alignment not in ALIGNMENT_MODES:
            raise ValueError(
                f"`alignment` must be one of {ALIGNMENT_MODES}; received {alignment!r}."
            )
        if input_shape[-1] != 3:
            raise ValueError(
                f"AlignSeg takes RGB images with 3 channels; input_shape={input_shape!r}."
            )
        sync = _should_sync_batchnorm(sync_batchnorm)
        normalization = default_normalization(backbone)
        for key, value in (("mean", mean), ("std", std), ("bgr", bgr)):
            if value is not None:
                normalization[key] = value
        normalization = {
            "mean": [float(v) for v in normalization["mean"]],
            "std": [float(v) for v in normalization["std"]],
            "bgr": bool(normalization["bgr"]),
        }
        backbone_model = get_backbone(backbone, backbone_weights)

        # === Functional model ===
        images = keras.Input(input_shape, name="images")
        x = ImageNormalization(**normalization, name="normalization")(images)
        if pad_to_multiple:
            x = PadToMultiple(pad_to_multiple, name="pad")(x)
        x1, x2, x3, x4 = backbone_model(x)

        block_args = dict(activation=activation, sync_batchnorm=sync)
        align_args = dict(alignment=alignment, **block_args)

        def rcb(name):
            return ResidualConvBlock(decoder_channels, name=name, **block_args)

        def align_fa(name, high, low):
            return AlignFA(name=name, **align_args)([high, low], return_offsets=True)

        offsets = {}
        d1 = rcb("rcb1a")(x1)
        d2, offsets["align_fa2"] = align_fa("align_fa2", d1, rcb("rcb2a")(x2))
        d2 = rcb("rcb2b")(d2)
        d3, offsets["align_fa3"] = align_fa("align_fa3", d2, rcb("rcb3a")(x3))
        d3 = rcb("rcb3b")(d3)
        d4, offsets["align_fa4"] = align_fa("align_fa4", d3, rcb("rcb4a")(x4))
        d4 = rcb("rcb4b")(d4)
        context, offsets["align_cm"] = AlignCM(
            decoder_channels,
            bins=context_bins,
            hidden_filters=context_hidden_channels,
            merge=context_merge,
            name="align_cm",
            **align_args,
        )(x4, return_offsets=True)
        d5, offsets["align_fa5"] = align_fa("align_fa5", d4, rcb("rcb5a")(context))
        d5 = rcb("rcb5b")(d5)

        def head(name, features):
            logits = SegmentationHead(
                num_classes, decoder_channels, dropout, name=name, **block_args
            )(features)
            # Logits leave the model in float32, also under mixed precision.
            logits = BilinearResize(True, dtype="float32", name=f"{name}_upsample")(
                [logits, x]
            )
            return CropToReference(dtype="float32", name=f"{name}_crop")([logits, images])

        outputs = head("head", d5)
        if deep_supervision:
            outputs = {"logits": outputs, "aux_logits": head("auxiliary_head", d3)}
        super().__init__(inputs=images, outputs=outputs, name=name, **kwargs)
        # Shape checks happen in `call`, with a clear message.
        self.input_spec = None

        # === Config ===
        self.num_classes = int(num_classes)
        self.backbone = backbone_model
        self.backbone_name = backbone if isinstance(backbone, str) else None
        self.backbone_weights = backbone_weights
        self.decoder_channels = decoder_channels
        self.context_bins = context_bins
        self.context_merge = context_merge
        self.context_hidden_channels = context_hidden_channels
        self.alignment = alignment
        self.deep_supervision = deep_supervision
        self.activation = activation
        self.dropout = dropout
        self.normalization = normalization
        self.pad_to_multiple = pad_to_multiple
        self.sync_batchnorm = sync
        self.image_shape = tuple(input_shape)
        self.offset_outputs = offsets
        if sync:
            synchronize_batchnorm(self)

    @staticmethod
    def _check_image_shape(shape):
        if shape is None or len(shape) != 4:
            raise ValueError(
                "AlignSeg expects a batch of images (batch, height, width, 3 channels); "
                f"received an input of shape {shape}."
            )
        if shape[-1] is not None and shape[-1] != 3:
            raise ValueError(
                "AlignSeg expects RGB images with 3 channels; received an input "
                f"of shape {tuple(shape)} with {shape[-1]} channels."
            )

    def _check_data(self, x):
        """Checks arrays and tf.data datasets before Keras traces a step function.

        Traced steps may relax the channel dimension to None, so a wrong channel
        count is caught here, with a clear message, rather than deep inside.
        """
        spec = getattr(x, "element_spec", None)
        if spec is not None:
            x = spec[0] if isinstance(spec, (tuple, list)) else spec
        if isinstance(x, dict) or getattr(x, "shape", None) is None:
            return
        self._check_image_shape(tuple(x.shape))

    def call(self, inputs, training=None, mask=None):
        self._check_image_shape(getattr(inputs, "shape", None))
        outputs = super().call(inputs, training=training, mask=mask)
        if isinstance(outputs, dict) and not training:
            return outputs["logits"]
        return outputs

    def _ignore_index(self):
        """The label the compiled loss ignores (255 unless the loss says otherwise)."""
        return getattr(getattr(self, "loss", None), "ignore_index", IGNORE_INDEX)

    def predict(self, x, *args, **kwargs):
        """Keras' `predict`, after checking that the images are finite.

        An empty batch or 0-sized images give empty logits
        `(batch, height, width, num_classes)` without running the network.
        """
        self._check_data(x)
        if is_empty_array(x):
            return np.zeros(tuple(x.shape[:3]) + (self.num_classes,), "float32")
        x, _ = checked_data(x)
        with data_errors(x):
            return super().predict(x, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """Keras' `evaluate`, after checking images and masks as `fit` does."""
        self._check_data(x)
        x, y = checked_data(x, y, self.num_classes, self._ignore_index())
        with data_errors(x):
            return super().evaluate(x, y, *args, **kwargs)

    def compile(
        self,
        optimizer=None,
        loss=None,
        metrics=None,
        aux_loss_weight=0.4,
        learning_rate=1e-2,
        total_steps=None,
        warmup_steps=0,
        weight_decay=1e-4,
        ignore_index=255,
        **kwargs,
    ):
        """Configures training; each of `optimizer`, `loss` and `metrics` falls
        back to the paper's recipe when left out.

        Args:
            optimizer: a Keras optimizer, or None for SGD with momentum 0.9,
                weight decay `weight_decay` and poly decay (power 0.9) from
                `learning_rate`, with `warmup_steps` of linear warm-up.
            loss: a Keras loss on (labels, logits), or None for
                `SegmentationCrossEntropy(ignore_index)`. With deep supervision it
                is applied to both heads: `loss(y, logits) + aux_loss_weight *
                loss(y, aux_logits)`.
            metrics: a list of metrics, or None for `MeanIoU(num_classes)`.
            aux_loss_weight: float, weight of the deep-supervision loss (0.4).
            learning_rate: float, base rate of the default optimizer (1e-2).
            total_steps: int or None, steps of the poly schedule (a fixed plan);
                None lets every `fit` extend the schedule over its own epochs and
                steps, starting from the current iteration, and keeps the rate
                constant before any `fit` (`train_on_batch`, custom loops). See
                `alignseg_keras.optimizers.WarmupPolynomialDecay`.
            warmup_steps: int, linear warm-up steps of the default optimizer.
            weight_decay: float, PyTorch-style weight decay of the default optimizer.
            ignore_index: int, label ignored by the default loss and metric.
            **kwargs: other `keras.Model.compile` arguments (`jit_compile`, ...).
        """
        from alignseg_keras.losses import SegmentationCrossEntropy
        from alignseg_keras.metrics import MeanIoU
        from alignseg_keras.optimizers import paper_sgd

        if optimizer is None:
            optimizer = paper_sgd(learning_rate, total_steps, warmup_steps, weight_decay=weight_decay)
        if loss is None:
            loss = SegmentationCrossEntropy(ignore_index=ignore_index)
        if metrics is None:
            metrics = [MeanIoU(self.num_classes, ignore_index=ignore_index)]
        self.aux_loss_weight = float(aux_loss_weight) if self.deep_supervision else 0.0
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_split=0.0,
        **kwargs,
    ):
        """Keras' `fit`, with the data checked and the poly schedule fitted to it.

        Arrays are checked up front, `tf.data` pipelines, generators and
        `PyDataset`s batch by batch: images must be finite, masks must have
        their images' height and width and hold class ids below `num_classes`
        or the ignore label (see `alignseg_keras.models.data_checks`). A
        default poly schedule compiled without `total_steps` is extended over
        this call's steps (see `WarmupPolynomialDecay`), so a second `fit`
        trains on.
        """
        self._check_data(x)
        steps = count_training_steps(
            x, batch_size, epochs, initial_epoch, steps_per_epoch, validation_split
        )
        require_training_data(steps, epochs, initial_epoch)
        if getattr(self, "optimizer", None) is not None and resolve_poly_schedule(self.optimizer, steps):
            self.train_function = None  # the schedule's length is traced into the step
        ignore_index = self._ignore_index()
        if "validation_data" in kwargs:
            kwargs["validation_data"] = checked_validation_data(
                kwargs["validation_data"], self.num_classes, ignore_index
            )
        if shuffles_itself(x):
            # A tf.data pipeline or a generator shuffles itself; avoids Keras' warning.
            kwargs.setdefault("shuffle", False)
        x, y = checked_data(x, y, self.num_classes, ignore_index)
        with data_errors(x):
            return super().fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                validation_split=validation_split,
                **kwargs,
            )

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["aux_loss_weight"] = self.aux_loss_weight
        return config

    def compile_from_config(self, config):
        """Restores the compiled state saved in a `.keras` file (optimizer included)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss on the main logits, plus the weighted deep-supervision loss."""
        aux_logits = None
        if isinstance(y_pred, dict):
            aux_logits = y_pred.get("aux_logits")
            y_pred = y_pred["logits"]
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        weight = getattr(self, "aux_loss_weight", 0.0)
        if aux_logits is not None and weight and self._compile_loss is not None:
            loss = loss + weight * self._compile_loss(y, aux_logits, sample_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def offset_model(self):
        """A `keras.Model` from images to the offset field of every alignment module.

        Its outputs are a dict keyed by module name (`align_fa2` ... `align_fa5`,
        `align_cm`); AlignFA fields have 4 channels (Delta_F, then Delta_A) and
        the AlignCM field 2, at stride 4 (AlignCM at stride 32) of the padded input.
        """
        return keras.Model(self.inputs[0], self.offset_outputs, name=f"{self.name}_offsets")

    @classmethod
    def from_preset(cls, preset, num_classes=19, **kwargs):
        """Builds a named configuration from `alignseg_keras.models.presets.PRESETS`.

        Args:
            preset: e.g. `"alignseg_resnet101_official"` (the authors' released
                model), `"alignseg_resnet101"` (the paper on Keras' ResNet-101) or
                `"alignseg_resnet18_small"`.
            num_classes: int, number of classes.
            **kwargs: any `AlignSeg` argument, overriding the preset.

        Example:
        ```python
        model = AlignSeg.from_preset("alignseg_resnet101_official", num_classes=19)
        ```
        """
        return cls(num_classes=num_classes, **preset_arguments(preset, kwargs))

    def get_config(self):
        backbone = self.backbone_name
        if backbone is None:
            backbone = keras.saving.serialize_keras_object(self.backbone)
        return {
            "num_classes": self.num_classes,
            "backbone": backbone,
            "backbone_weights": None,
            "decoder_channels": self.decoder_channels,
            "context_bins": self.context_bins,
            "context_merge": self.context_merge,
            "context_hidden_channels": self.context_hidden_channels,
            "alignment": self.alignment,
            "deep_supervision": self.deep_supervision,
            "activation": self.activation,
            "dropout": self.dropout,
            "mean": self.normalization["mean"],
            "std": self.normalization["std"],
            "bgr": self.normalization["bgr"],
            "pad_to_multiple": self.pad_to_multiple,
            "sync_batchnorm": self.sync_batchnorm,
            "input_shape": self.image_shape,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
