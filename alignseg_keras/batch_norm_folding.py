"""BatchNormalization folded into the convolution before it, for inference.

At inference a BatchNormalization is the affine map `y = s * x + (beta - s * mean)`
with `s = gamma / sqrt(moving_variance + epsilon)` per channel. When `x` is the
output of a convolution `x = W * u + b` and nothing else reads `x`, the two are
one convolution: `y = (s W) * u + s (b - mean) + beta`. Folded, the
normalisation costs a bias addition, which TensorFlow's graph optimiser fuses
into the convolution's kernel together with a following ReLU; unfolded it is a
separate pass over the activation (TensorFlow's optimiser folds it only in
float32, not in bfloat16). AlignSeg-R101's bfloat16 inference at 512x512 is
5-10% faster folded by the minimum of repeated runs, less or nothing by the median (docs/benchmarks.md, "BatchNormalization folded for
inference").

A folded BatchNormalization keeps weights that describe the same map (`gamma`
1, `beta` the folded bias, moving mean 0, moving variance `1 - epsilon`) and is
frozen (`trainable = False`), so a folded model saved and loaded again computes
the same function, through the unfolded layer. Folding is for inference:
fine-tuning a folded model would not update any statistics.

Folded are the pairs `Conv2D -> FusedBatchNormalization` (the layer of this
package) in which the convolution's output goes to the normalisation alone:
in functional models (the ResNet encoders) found from the graph, and inside
`ConvNormActivation`. Keras' own `BatchNormalization` (the keras-hub and
Keras Applications encoders) is left as it is, as is the normalisation of a
residual sum (`ResidualConvBlock.norm`).

Example:
```python
folded = fold_batch_normalization(model)
probabilities = predict_whole(folded, images)
```
"""

import keras
import numpy as np

from alignseg_keras.inference import copy_model
from alignseg_keras.layers.batch_normalization import FusedBatchNormalization
from alignseg_keras.layers.conv_norm_activation import ConvNormActivation


def fold_batch_normalization(model):
    """A copy of `model` with every foldable BatchNormalization folded into its convolution.

    The copy computes the same logits as `model` in inference to rounding (in
    float32 about 1e-6 relative; under `mixed_bfloat16` the scaled kernels are
    rounded to bfloat16 instead of the unscaled ones). `model` is unchanged.

    Args:
        model: a built Keras model (AlignSeg, or any model of these layers).

    Returns:
        The folded copy.
    """
    if not model.built:
        raise ValueError(f"fold_batch_normalization needs a built model; {model.name} is not built.")
    folded = copy_model(model)
    fold_in_place(folded)
    return folded


def fold_in_place(model):
    """Folds every pair of `conv_norm_pairs(model)` in `model` itself; returns how many."""
    pairs = conv_norm_pairs(model)
    for conv, norm in pairs:
        fold_pair(conv, norm)
    return len(pairs)


def conv_norm_pairs(model):
    """`[(conv, norm), ...]`: the foldable convolution and normalisation pairs of `model`."""
    candidates, blocked = {}, set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, ConvNormActivation):
            candidates[id(layer.norm)] = (layer.conv, layer.norm)
        elif isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            graph_pairs, graph_blocked = _graph_pairs(layer)
            candidates.update({id(norm): (conv, norm) for conv, norm in graph_pairs})
            blocked |= graph_blocked
    return [
        (conv, norm)
        for conv, norm in candidates.values()
        if id(conv) not in blocked and _foldable(conv, norm)
    ]


def _graph_pairs(model):
    """The pairs in the graph of functional `model`, and the ids of convolutions
    whose output something other than a normalisation reads there."""
    nodes = [node for depth in model._nodes_by_depth.values() for node in depth]
    readers = {}
    for node in nodes:
        for tensor in node.input_tensors:
            readers.setdefault(id(tensor), []).append(node.operation)
    for tensor in keras.tree.flatten(model.outputs):
        readers.setdefault(id(tensor), []).append(None)
    pairs, blocked = [], set()
    for node in nodes:
        if not isinstance(node.operation, keras.layers.Conv2D):
            continue
        conv = node.operation
        (output,) = node.output_tensors
        (reader, *others) = readers.get(id(output), [None])
        if others or not isinstance(reader, FusedBatchNormalization):
            blocked.add(id(conv))
        else:
            pairs.append((conv, reader))
    return pairs, blocked


def _foldable(conv, norm):
    """Whether `norm` may be folded into `conv`: a linear convolution (one with its own
    activation, `Conv2D(activation="relu")`, computes `norm(relu(conv))`, not a product
    of the two), channels last, and a norm of the last axis not yet folded."""
    return (
        conv.activation is keras.activations.linear
        and conv.data_format == "channels_last"
        and norm.axis in (-1, 3)
        and norm.center
        and not getattr(norm, "folded", False)
    )


def fold_pair(conv, norm):
    """Folds `norm` (inference statistics) into `conv`'s kernel and bias, in place.

    `kernel <- s kernel` per output channel and `norm` becomes the bias
    addition `x + (beta + s (b - mean))`, `s = gamma / sqrt(moving_variance + epsilon)`,
    computed in float64 and stored in the variables' dtype.
    """
    variance = np.asarray(norm.moving_variance, np.float64)
    gamma = np.asarray(norm.gamma, np.float64) if norm.scale else np.ones_like(variance)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    bias = np.asarray(norm.beta, np.float64) - scale * np.asarray(norm.moving_mean, np.float64)
    if conv.use_bias:
        bias += scale * np.asarray(conv.bias, np.float64)
        conv.bias.assign(np.zeros(conv.bias.shape, conv.bias.dtype))
    conv.kernel.assign((np.asarray(conv.kernel, np.float64) * scale).astype(conv.kernel.dtype))
    if norm.scale:
        norm.gamma.assign(np.ones(norm.gamma.shape, norm.gamma.dtype))
    norm.beta.assign(bias.astype(norm.beta.dtype))
    norm.moving_mean.assign(np.zeros(norm.moving_mean.shape, norm.moving_mean.dtype))
    norm.moving_variance.assign(
        np.full(norm.moving_variance.shape, 1.0 - norm.epsilon, norm.moving_variance.dtype)
    )
    norm.folded = True
    norm.trainable = False
