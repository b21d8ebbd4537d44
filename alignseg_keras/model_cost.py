"""Parameters and multiply-accumulates (MACs) of a model, per part, counted analytically.

`model_cost(model, (height, width))` walks the model's functional graph with
symbolic shapes for one image of that size and counts, for every layer, the
arithmetic of the network *as defined* by its layers (the weights applied at
the shapes they see), like mmsegmentation's `tools/analysis_tools/get_flops.py`
(fvcore / mmengine counters). No backend is run and nothing is imported from
TensorFlow: the shapes come from Keras' shape inference.

Conventions (one image; `GFLOPs = 2 x GMACs`, the usual "a multiply-add is
2 FLOPs"; mmsegmentation's and fvcore's "FLOPs" are MACs):

- convolution (`Conv1D/2D/3D`): `k_h k_w C_in / groups` MACs per output
  element; `Conv2DTranspose`: `k_h k_w C_out` per *input* element and input
  channel; `DepthwiseConv2D`: `k_h k_w` per output element; `Dense`: `C_in`
  per output element. Biases are not counted (as fvcore and PyTorch's
  `FlopCounterMode`).
- normalisation (`BatchNormalization`, `LayerNormalization`,
  `GroupNormalization`): 1 MAC per element (inference: one scale and shift,
  foldable into the convolution before it).
- bilinear resizing (`BilinearResize`, the upsampling inside AlignFA, AlignCM
  and `UpsampleFusion("bilinear")`) and the alignment sampler
  (`AlignmentLayer`, U of the paper's Eq. 2): 4 MACs per output element (four
  taps weighted and summed per channel); the sampling positions and weights,
  computed once per output pixel for all channels, are not counted.
- pooling (max, average, adaptive average): 1 per input element.
- element-wise operations (activations, additions, concatenation, padding,
  cropping, the image normalisation) are not counted, as fvcore ignores them.

The composite layers of this library are counted from their definition:
AlignFA's offset heads read the concatenation `[A, up(F)]` with a 1x1
convolution over both halves at A's size, as the paper and the authors' code
define it (`offset_heads="paper"`, the default, comparable with the authors'
network part by part). This library computes that convolution as
`W_A A + up(W_F F)` (`OffsetHead.call_on_upsampled_pair`), the F half at F's
resolution, then upsamples its output; `offset_heads="computed"` counts that. A layer type without
a rule is counted as 0 and listed in `ModelCost.uncounted` (with whether it
has weights), never dropped silently.

Example:
```python
cost = model_cost(AlignSeg.from_preset("alignseg_resnet101_official"), (1024, 2048))
for row in cost.rows:
    print(row.part, row.parameters, row.macs / 1e9)
```
"""

import collections
import dataclasses
import math

import keras

# The kinds of arithmetic counted, in the order reports list them.
KINDS = ("conv", "norm", "resample", "pool")
# Keras layer types that compute nothing counted (element-wise, shape, or no-op).
FREE_LAYER_TYPES = (
    "InputLayer", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Activation", "Add",
    "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Reshape",
    "Flatten", "Permute", "Identity", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Rescaling",
    # this library's
    "ImageNormalization", "PadToMultiple", "CropToReference",
)
# How AlignFA's offset heads are counted: as the paper defines them (a 1x1
# convolution over [A, up(F)] at A's size), or as this library computes them
# (W_A A + up(W_F F): F's half at F's size, its output upsampled).
OFFSET_HEAD_COUNTS = ("paper", "computed")
# Parts whose only input is a training output: AlignSeg's deep supervision.
INFERENCE_OUTPUT_KEY = "logits"


@dataclasses.dataclass
class PartCost:
    """The cost of one part of a model.

    Attributes:
        part: the part's name (a layer of the model, or of its backbone).
        parameters: number of weights, BatchNorm moving statistics excluded.
        macs: multiply-accumulates for one image, all kinds together.
        macs_by_kind: dict kind (`KINDS`) -> MACs.
        training_only: True for parts that only feed a training output
            (AlignSeg's deep-supervision head); not in the inference total.
        layer_type: the class name of the part's layer.
    """

    part: str
    parameters: int
    macs: int
    macs_by_kind: dict
    training_only: bool = False
    layer_type: str = ""

    @property
    def flops(self):
        """FLOPs, 2 per multiply-accumulate."""
        return 2 * self.macs


@dataclasses.dataclass
class ModelCost:
    """What `model_cost` returns.

    Attributes:
        rows: list of `PartCost`, in the order the model computes them.
        image_size: `(height, width)` counted.
        parameters: all the model's weights (BN statistics excluded).
        macs: MACs of one inference (training-only parts excluded).
        training_macs: MACs with the training-only parts.
        uncounted: list of `(path, class name, has_weights)` for layers or
            operations without a counting rule (counted as 0).
    """

    rows: list
    image_size: tuple
    parameters: int
    macs: int
    training_macs: int
    uncounted: list

    @property
    def inference_parameters(self):
        """Weights of the parts used in inference."""
        return sum(row.parameters for row in self.rows if not row.training_only)

    def macs_by_kind(self, include_training=False):
        totals = dict.fromkeys(KINDS, 0)
        for row in self.rows:
            if include_training or not row.training_only:
                for kind, value in row.macs_by_kind.items():
                    totals[kind] += value
        return totals

    def to_dict(self):
        """A JSON-ready dict (the convention is stated in it)."""
        return {
            "image_size": list(self.image_size),
            "convention": "MACs per image; GFLOPs = 2 x GMACs; biases and element-wise "
            "operations not counted; normalisation 1 MAC per element; bilinear resize and "
            "alignment sampler 4 MACs per output element; pooling 1 per input element",
            "parts": [
                {
                    "part": row.part,
                    "layer_type": row.layer_type,
                    "parameters": row.parameters,
                    "macs": row.macs,
                    "flops": row.flops,
                    "macs_by_kind": dict(row.macs_by_kind),
                    "training_only": row.training_only,
                    "share": row.macs / self.macs if self.macs and not row.training_only
                    else None,
                }
                for row in self.rows
            ],
            "total": {
                "parameters": self.parameters,
                "inference_parameters": self.inference_parameters,
                "macs": self.macs,
                "flops": 2 * self.macs,
                "macs_by_kind": self.macs_by_kind(),
                "training_macs": self.training_macs,
            },
            "uncounted": [
                {"layer": path, "type": kind, "has_weights": weights}
                for path, kind, weights in self.uncounted
            ],
        }


def _size(shape):
    return math.prod(int(dim) for dim in shape)


def _tensor(shape):
    return keras.KerasTensor(tuple(shape))


def _shapes(structure):
    return keras.tree.map_structure(lambda t: tuple(t.shape), structure)


class _Counter:
    """Accumulates MACs by kind while layers are visited with symbolic tensors."""

    def __init__(self, offset_heads="paper"):
        if offset_heads not in OFFSET_HEAD_COUNTS:
            raise ValueError(
                f"`offset_heads` must be one of {OFFSET_HEAD_COUNTS}; "
                f"received offset_heads={offset_heads!r}."
            )
        self.offset_heads = offset_heads
        self.macs = collections.Counter()
        self.uncounted = []

    def add(self, kind, value):
        self.macs[kind] += int(value)

    # === Visiting ===

    def visit(self, layer, *args, path="", **kwargs):
        """Counts `layer` called on `args` (KerasTensors); returns its output tensors."""
        path = f"{path}/{layer.name}" if path else layer.name
        rule = next(
            (_RULES[base.__name__] for base in type(layer).__mro__ if base.__name__ in _RULES),
            None,
        )
        if rule is not None:
            return rule(self, layer, path, *args, **kwargs)
        if _is_functional(layer):
            return self.functional(layer, args, kwargs, path)
        if isinstance(layer, keras.Sequential):
            x = args[0]
            for sublayer in layer.layers:
                x = self.visit(sublayer, x, path=path)
            return x
        if type(layer).__name__ not in FREE_LAYER_TYPES:
            self.uncounted.append((path, type(layer).__name__, bool(layer.weights)))
        return layer.compute_output_spec(*args, **_call_kwargs(kwargs))

    def functional(self, model, args, kwargs, path, on_node=None):
        """Walks a functional model's graph; `on_node(operation, macs_before)` hook."""

        def call(operation, *node_args, **node_kwargs):
            if not isinstance(operation, keras.layers.Layer):
                self.uncounted.append(
                    (f"{path}/{operation.name}", type(operation).__name__, False)
                )
                return operation.compute_output_spec(*node_args, **node_kwargs)
            before = self.macs.copy()
            outputs = self.visit(operation, *node_args, path=path, **node_kwargs)
            if on_node is not None:
                on_node(operation, before)
            return outputs

        inputs = args[0] if len(args) == 1 else list(args)
        return model._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call)

    # === Arithmetic of primitives ===

    def resize(self, x, size):
        """Bilinear resizing of `x` to `size`: 4 MACs per output element."""
        shape = tuple(x.shape[:1]) + tuple(size) + tuple(x.shape[-1:])
        self.add("resample", 4 * _size(shape))
        return _tensor(shape)


def _call_kwargs(kwargs):
    return {key: value for key, value in kwargs.items() if key not in ("training", "mask")}


def _is_functional(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph") and bool(
        getattr(layer, "_nodes_by_depth", None)
    )


def _output(layer, *args, **kwargs):
    return layer.compute_output_spec(*args, **_call_kwargs(kwargs))


# === Rules: (counter, layer, path, *args, **kwargs) -> output tensors ===


def _convolution(counter, layer, path, x, **kwargs):
    y = _output(layer, x)
    kernel = layer.kernel.shape  # (*spatial, C_in / groups, C_out)
    counter.add("conv", _size(y.shape) * _size(kernel[:-1]))
    return y


def _transposed_convolution(counter, layer, path, x, **kwargs):
    y = _output(layer, x)
    kernel = layer.kernel.shape  # (*spatial, C_out, C_in)
    counter.add("conv", _size(x.shape) * _size(kernel[:-1]))
    return y


def _depthwise_convolution(counter, layer, path, x, **kwargs):
    y = _output(layer, x)
    counter.add("conv", _size(y.shape) * _size(layer.kernel_size))
    return y


def _separable_convolution(counter, layer, path, x, **kwargs):
    y = _output(layer, x)
    depthwise = _size(x.shape[:1]) * _size(y.shape[1:-1]) * x.shape[-1] * _size(
        layer.kernel_size
    ) * layer.depth_multiplier
    counter.add("conv", depthwise + _size(y.shape) * x.shape[-1] * layer.depth_multiplier)
    return y


def _dense(counter, layer, path, x, **kwargs):
    y = _output(layer, x)
    counter.add("conv", _size(y.shape) * x.shape[-1])
    return y


def _normalization(counter, layer, path, x, **kwargs):
    counter.add("norm", _size(x.shape))
    return _output(layer, x)


def _pooling(counter, layer, path, x, **kwargs):
    counter.add("pool", _size(x.shape))
    return _output(layer, x)


def _alignment(counter, layer, path, inputs, **kwargs):
    y = _output(layer, inputs)
    counter.add("resample", 4 * _size(y.shape))
    return y


def _bilinear_resize(counter, layer, path, inputs, **kwargs):
    images, reference = inputs
    return counter.resize(images, reference.shape[1:3])


def _conv_norm_activation(counter, layer, path, x, **kwargs):
    if layer.padding is not None:
        x = counter.visit(layer.padding, x, path=path)
    return counter.visit(layer.norm, counter.visit(layer.conv, x, path=path), path=path)


def _residual_conv_block(counter, layer, path, x, **kwargs):
    x = counter.visit(layer.unify, x, path=path)
    residual = counter.visit(layer.residual_reduce, x, path=path)
    counter.visit(layer.residual_expand, residual, path=path)
    return counter.visit(layer.norm, x, path=path)  # norm(x + residual)


def _offset_head(counter, layer, path, x, **kwargs):
    return counter.visit(layer.offsets, counter.visit(layer.hidden, x, path=path), path=path)


def _segmentation_head(counter, layer, path, x, **kwargs):
    x = counter.visit(layer.hidden, x, path=path)
    x = counter.visit(layer.spatial_dropout, x, path=path)
    return counter.visit(layer.classifier, x, path=path)


def _concatenated(a, b):
    return _tensor(tuple(a.shape[:-1]) + (a.shape[-1] + b.shape[-1],))


def _offset_head_on_upsampled_pair(counter, head, path, high, low):
    # W_A A + up(W_F F), then the head's BN and 3x3 convolution.
    path = f"{path}/{head.name}"
    channels = head.hidden.conv.filters
    counter.add("conv", _size(high.shape[:-1]) * high.shape[-1] * channels)
    counter.add("conv", _size(low.shape[:-1]) * low.shape[-1] * channels)
    hidden = counter.resize(_tensor(tuple(low.shape[:-1]) + (channels,)), high.shape[1:3])
    hidden = counter.visit(head.hidden.norm, hidden, path=path)
    return counter.visit(head.offsets, hidden, path=path)


def _align_fa(counter, layer, path, inputs, return_offsets=False, **kwargs):
    # out = U(up(F), Delta_F) + U(A, Delta_A), offsets from concat([A, up(F)]) (Eq. 1).
    high, coarse = inputs
    low = counter.resize(coarse, high.shape[1:3])
    concat = _concatenated(high, low)
    fields = []
    for head, feature in ((layer.low_resolution_offsets, low),
                          (layer.high_resolution_offsets, high)):
        if head is not None:
            if counter.offset_heads == "computed":
                offsets = _offset_head_on_upsampled_pair(counter, head, path, high, coarse)
            else:
                offsets = counter.visit(head, concat, path=path)
            fields.append(offsets)
            counter.visit(layer.align, [feature, offsets], path=path)
    output = _tensor(high.shape)
    if return_offsets:
        return output, _tensor(tuple(high.shape[:-1]) + (2 * len(fields),))
    return output


def _align_cm(counter, layer, path, x, return_offsets=False, **kwargs):
    # context = project(reduce(pool(x))), local = project(reduce(x)),
    # out = local (+ or concat) U(context, offsets(concat([local, up(context)]))) (Eq. 3).
    context = counter.visit(layer.pool, x, path=path)
    context = counter.visit(layer.context_reduce, context, path=path)
    context = counter.visit(layer.context_project, context, path=path)
    local = counter.visit(layer.local_reduce, x, path=path)
    local = counter.visit(layer.local_project, local, path=path)
    upsampled = counter.resize(context, local.shape[1:3])
    offsets = None
    if layer.offset_head is not None:
        offsets = counter.visit(layer.offset_head, _concatenated(local, upsampled), path=path)
        counter.visit(layer.align, [context, offsets], path=path)
    output = local if layer.context_merge == "sum" else _concatenated(local, local)
    if return_offsets:
        return output, offsets
    return output


def _upsample_fusion(counter, layer, path, inputs, **kwargs):
    high, low = inputs
    if layer.fusion == "bilinear":
        counter.resize(low, high.shape[1:3])
    else:
        for deconvolution in layer.deconvolutions:
            low = counter.visit(deconvolution, low, path=path)
    return _tensor(high.shape)


# Rules by class name, this library's layers and Keras' (a layer takes the rule of
# its first class, in method resolution order, that has one).
_RULES = {
    "AlignmentLayer": _alignment,
    "BilinearResize": _bilinear_resize,
    "AdaptiveAveragePooling2D": _pooling,
    "CeilModeMaxPooling2D": _pooling,
    "ConvNormActivation": _conv_norm_activation,
    "ResidualConvBlock": _residual_conv_block,
    "OffsetHead": _offset_head,
    "SegmentationHead": _segmentation_head,
    "AlignFA": _align_fa,
    "AlignCM": _align_cm,
    "UpsampleFusion": _upsample_fusion,
    "SeparableConv2D": _separable_convolution,
    "SeparableConv1D": _separable_convolution,
    "DepthwiseConv2D": _depthwise_convolution,
    "DepthwiseConv1D": _depthwise_convolution,
    "Conv1DTranspose": _transposed_convolution,
    "Conv2DTranspose": _transposed_convolution,
    "Conv3DTranspose": _transposed_convolution,
    "BaseConvTranspose": _transposed_convolution,
    "BaseDepthwiseConv": _depthwise_convolution,
    "BaseSeparableConv": _separable_convolution,
    "BaseConv": _convolution,
    "Dense": _dense,
    "BatchNormalization": _normalization,
    "LayerNormalization": _normalization,
    "GroupNormalization": _normalization,
    "BasePooling": _pooling,
    "BaseGlobalPooling": _pooling,
}


def count_parameters(layer):
    """Weights of `layer` (each shared weight once), BatchNorm moving statistics excluded.

    The moving mean and variance are statistics, not parameters (PyTorch's
    buffers); a frozen layer's weights still count.
    """
    statistics = set()
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            statistics.update(id(v) for v in (sublayer.moving_mean, sublayer.moving_variance))
    seen = set()
    total = 0
    for variable in layer.weights:
        if id(variable) in seen or id(variable) in statistics:
            continue
        seen.add(id(variable))
        total += _size(variable.shape)
    return total


def layer_cost(layer, *input_shapes, offset_heads="paper", **call_kwargs):
    """MACs by kind (a dict over `KINDS`) of one call of `layer` on inputs of these shapes.

    Shapes include the batch. A layer taking a list (AlignFA, AlignmentLayer)
    takes one argument, the list of shapes. `offset_heads` (`OFFSET_HEAD_COUNTS`)
    chooses how AlignFA's offset heads are counted (module docstring). Raises
    `ValueError` if a layer in it has no counting rule.

    Example:
    ```python
    layer_cost(ResidualConvBlock(256), (1, 64, 128, 1024))["conv"]
    layer_cost(AlignFA(), [(1, 64, 64, 256), (1, 32, 32, 256)])
    ```
    """
    def as_tensors(shapes):
        if isinstance(shapes, list):
            return [_tensor(shape) for shape in shapes]
        return _tensor(shapes)

    args = [as_tensors(shapes) for shapes in input_shapes]
    if not layer.built:
        layer.build(*_shapes(args))
    counter = _Counter(offset_heads)
    counter.visit(layer, *args, **call_kwargs)
    if counter.uncounted:
        raise ValueError(f"No counting rule for {counter.uncounted}.")
    return {kind: counter.macs[kind] for kind in KINDS}


def _parse_size(image_size):
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    height, width = (int(size) for size in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"The image size must be positive; received {image_size!r}.")
    return height, width


def _training_only_operations(model):
    """Top-level layers of `model` that only feed outputs other than the inference one."""
    outputs = getattr(model, "_outputs_struct", None)
    if not isinstance(outputs, dict) or INFERENCE_OUTPUT_KEY not in outputs:
        return set()
    needed, seen, stack = set(), set(), [outputs[INFERENCE_OUTPUT_KEY]]
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation = history.operation
        needed.add(id(operation))
        stack.extend(operation._inbound_nodes[history.node_index].input_tensors)
    return {
        id(layer) for layer in model.layers if id(layer) not in needed
        and not isinstance(layer, keras.layers.InputLayer)
    }


def _part_name(layer, backbone):
    """The backbone's nested functional model is its image encoder."""
    encoder = getattr(backbone, "image_encoder", None)
    if encoder is not None and _is_functional(layer):
        return f"image_encoder ({encoder.name})"
    return layer.name


def model_cost(model, image_size, batch_size=1, offset_heads="paper"):
    """Parameters and MACs of `model` per part, for images of `image_size`.

    The parts are the layers of the model's functional graph; the model's
    `backbone` (an `AlignSegBackbone`), if it has one, is split into its own
    layers: the image encoder, `rcb*`, `align_fa2..5` (or `fusion2..5`),
    `align_cm` (or `pooled_context`). Counting conventions: see the module's
    docstring.

    Args:
        model: a functional `keras.Model` (e.g. `AlignSeg`) taking images.
        image_size: int or `(height, width)` of the input images.
        batch_size: int, images per call (the counts scale with it).
        offset_heads: `"paper"` (default) or `"computed"`: AlignFA's offset
            heads as the paper defines them or as this library computes them.

    Returns:
        A `ModelCost`; `rows` is the list of `PartCost` (part, parameters,
        MACs, ...) in the order the model computes them.
    """
    height, width = _parse_size(image_size)
    if not _is_functional(model):
        raise ValueError(
            f"model_cost walks functional models; {model.name!r} "
            f"({type(model).__name__}) is not one."
        )
    input_shape = tuple(model.inputs[0].shape)
    for given, fixed in zip((height, width), input_shape[1:3]):
        if fixed is not None and fixed != given:
            raise ValueError(
                f"{model.name!r} takes images of {input_shape[1]}x{input_shape[2]} only; "
                f"received an image size of {height}x{width}."
            )
    images = _tensor((batch_size, height, width) + tuple(input_shape[3:]))
    backbone = getattr(model, "backbone", None)
    if not _is_functional(backbone) or not any(layer is backbone for layer in model.layers):
        backbone = None
    training_only = _training_only_operations(model)
    counter = _Counter(offset_heads)
    rows = []

    def record(layer, before, is_training_only):
        macs = {kind: counter.macs[kind] - before[kind] for kind in KINDS}
        rows.append(PartCost(
            part=_part_name(layer, backbone),
            parameters=count_parameters(layer),
            macs=sum(macs.values()),
            macs_by_kind=macs,
            training_only=is_training_only,
            layer_type=type(layer).__name__,
        ))

    def top_level(operation, before):
        if operation is backbone:
            return  # its layers are parts of their own
        record(operation, before, id(operation) in training_only)

    def call(operation, *args, **kwargs):
        if operation is backbone:
            return counter.functional(
                backbone, args, kwargs, operation.name,
                on_node=lambda layer, before: record(
                    layer, before, id(backbone) in training_only
                ),
            )
        return counter.visit(operation, *args, **kwargs)

    def walk(operation, *args, **kwargs):
        before = counter.macs.copy()
        if not isinstance(operation, keras.layers.Layer):
            counter.uncounted.append((operation.name, type(operation).__name__, False))
            return operation.compute_output_spec(*args, **kwargs)
        outputs = call(operation, *args, **kwargs)
        top_level(operation, before)
        return outputs

    model._run_through_graph(images, operation_fn=lambda op: op, call_fn=walk)
    rows = [row for row in rows if row.layer_type != "InputLayer"]
    inference = sum(row.macs for row in rows if not row.training_only)
    return ModelCost(
        rows=rows,
        image_size=(height, width),
        parameters=count_parameters(model),
        macs=inference,
        training_macs=sum(row.macs for row in rows),
        uncounted=counter.uncounted,
    )
