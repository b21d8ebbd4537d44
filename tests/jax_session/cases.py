"""Models and inputs shared by the JAX and torch test sessions and their TensorFlow reference.

Everything here is backend-neutral: `tf_reference.py` builds these on
TensorFlow, randomises and saves them, and `tests/test_jax_backend.py` and
`tests/test_torch_backend.py` load them on JAX or torch and compare outputs
computed from the same weights (`tf_comparison.py`).
"""

import keras
import numpy as np

from alignseg_keras import AlignSeg
from alignseg_keras import layers
from alignseg_keras.testing import comparisons

NUM_CLASSES = 5
IMAGE_SHAPE = (2, 64, 80, 3)
# Layer inputs: a fine and a coarse feature map, an offset field at the fine
# size and a deep feature map for AlignCM.
LAYER_INPUT_SHAPES = {
    "fine": (2, 12, 14, 8),
    "coarse": (2, 6, 7, 8),
    "offsets": (2, 12, 14, 2),
    "deep": (2, 5, 6, 24),
}
FILES = {
    "layers": "layers.keras",
    "layer_inputs": "layer_inputs.npz",
    "layer_outputs": "layer_outputs.npz",
    "alignment_gradients": "alignment_gradients.npz",
    "model": "model.keras",
    "model_outputs": "model_outputs.npz",
    "trained_weights": "trained_weights.npz",
    # Saved by the JAX or torch session, loaded back on TensorFlow.
    "backend_model": "backend_model.keras",
    "backend_model_outputs": "backend_model_outputs.npz",
}
# Outputs of two backends from the same weights differ by float32 rounding
# only. Each backend sums the products of a convolution in its own order
# (oneDNN's blocks on TensorFlow, XLA's or ATen's kernels on JAX and torch),
# which leaves a relative error of about sqrt(K) * 2**-24 in a sum of K
# products (K <= 3 * 3 * 512 here: at most ~4e-6), and some 30 layers pass it
# on. Measured on these models: ~1e-6 of the output scale for the layers, the
# inference logits and the weights after a training step; ~4e-5 for the
# training-mode logits, where BatchNorm divides the 12 values per channel of
# the stride-32 map by their own small standard deviation and so amplifies the
# rounding. A bound of 1e-4 of the largest magnitude holds these with a margin,
# and stays far below what a real difference gives (measured the same way):
# offsets 0.01 pixel off move the alignment output by ~9e-3 of its scale, one
# pixel off by ~0.8, swapped offset channels by ~1.5; a training step left out
# leaves the kernels ~1.5e-2 and the BatchNorm statistics ~0.5 away.
TOLERANCE = 1e-4


def layer_inputs(seed=0):
    rng = np.random.default_rng(seed)
    inputs = {name: rng.normal(size=shape).astype("float32") for name, shape in LAYER_INPUT_SHAPES.items()}
    # Offsets of a few pixels, reaching outside the map.
    inputs["offsets"] *= 2.0
    return inputs


def layer_model():
    """One functional model holding every AlignSeg layer, outputs keyed by layer."""
    tensors = {name: keras.Input(shape[1:], name=name) for name, shape in LAYER_INPUT_SHAPES.items()}
    fine, coarse, offsets, deep = (tensors[name] for name in LAYER_INPUT_SHAPES)
    outputs = {
        "align_standard": layers.AlignmentLayer("standard")([coarse, offsets]),
        "align_official": layers.AlignmentLayer("official")([coarse, offsets]),
        "resize_align_corners": layers.BilinearResize(True)([coarse, fine]),
        "resize_half_pixel": layers.BilinearResize(False)([coarse, fine]),
        "align_fa": layers.AlignFA(offset_channels=8)([fine, coarse]),
        "align_fa_official": layers.AlignFA(offset_channels=8, alignment="official")([fine, coarse]),
        "align_cm_sum": layers.AlignCM(
            8, context_bins=3, context_hidden_channels=16, offset_channels=8
        )(deep),
        "align_cm_concat": layers.AlignCM(
            8,
            context_bins=2,
            context_hidden_channels=16,
            context_merge="concat",
            offset_channels=8,
            activation="leaky_relu",
        )(deep),
        "residual_conv_block": layers.ResidualConvBlock(16)(fine),
        "segmentation_head": layers.SegmentationHead(NUM_CLASSES, 8, dropout=0.0)(fine),
        "adaptive_pooling": layers.AdaptiveAveragePooling2D(3)(deep),
    }
    return keras.Model(tensors, outputs, name="alignseg_layers")


def tiny_alignseg():
    """A tiny AlignSeg without dropout, so that training-mode outputs are deterministic."""
    return AlignSeg(
        NUM_CLASSES,
        backbone="resnet18",
        decoder_channels=16,
        context_hidden_channels=32,
        dropout=0.0,
    )


def randomize_weights(model, seed=0):
    """Random weights everywhere, so that no layer is trivial in the comparison.

    The offset heads start at zero (plain upsampling); random small kernels
    give offsets of a few pixels. BatchNorm statistics get random values so
    that inference-mode normalisation is exercised.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        name = variable.path
        if "moving_variance" in name or name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, size=shape)
        elif "moving_mean" in name or name.endswith("beta") or name.endswith("bias"):
            value = rng.normal(0.0, 0.1, size=shape)
        else:
            fan_in = max(int(np.prod(shape[:-1])), 1)
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), size=shape)
        variable.assign(value.astype(variable.dtype))


def images(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=IMAGE_SHAPE).astype("float32")


def labels(seed=0):
    values = np.random.default_rng(seed).integers(0, NUM_CLASSES, size=IMAGE_SHAPE[:3])
    values[:, :4] = 255  # some ignored pixels
    return values.astype("int32")


def compile_for_one_step(model, **kwargs):
    """Plain SGD with the default loss: one step gives the same weights on every backend."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), metrics=[], **kwargs)


def alignment_objective(output):
    """A non-linear scalar of the alignment output, for gradient comparisons."""
    return keras.ops.sum(output * keras.ops.cos(output))


def relative_error(actual, expected):
    """Max |actual - expected|, relative to the largest magnitude of `expected` (at least 1)."""
    return comparisons.relative_error(actual, expected, minimum_scale=1.0)


def weights_by_path(model):
    return {variable.path: np.asarray(variable) for variable in model.weights}
