"""State dicts with the names and shapes of the authors' checkpoints, for conversion tests."""

import json
import re
from pathlib import Path

import numpy as np

SHAPES_FILE = Path(__file__).parents[2] / "tests" / "data" / "official_state_dict_shapes.json"


def official_shapes(depth):
    """The authors' state_dict shapes (19 classes); ResNet-50 drops layer3 blocks 6-22."""
    shapes = json.loads(SHAPES_FILE.read_text())
    if depth == 50:
        shapes = {
            name: shape
            for name, shape in shapes.items()
            if not (m := re.match(r"layer3\.(\d+)\.", name)) or int(m.group(1)) < 6
        }
    return {name: tuple(shape) for name, shape in shapes.items()}


def random_state_dict(depth, seed=0, shapes=None):
    """Random tensors with the official names; conv weights He-scaled, BN statistics non-trivial.

    A quarter of the normalisation weights are negative, as in trained InPlaceABN networks.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in (shapes or official_shapes(depth)).items():
        if name.endswith("num_batches_tracked"):
            state[name] = np.array(1000, "int64")
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype("float32")
        elif len(shape) == 4:
            fan_in = np.prod(shape[1:])
            state[name] = (rng.standard_normal(shape) * 0.5 * np.sqrt(2 / fan_in)).astype("float32")
        elif is_norm_weight(name, shape):
            sign = np.where(rng.uniform(size=shape) < 0.25, -1.0, 1.0)
            state[name] = (sign * rng.uniform(0.5, 1.5, shape)).astype("float32")
        else:  # biases and running means
            state[name] = (rng.standard_normal(shape) * 0.1).astype("float32")
    return state


def is_norm_weight(name, shape):
    return name.endswith(".weight") and len(shape) == 1


def assert_exported_equals(exported, state, names=None):
    """Every tensor as given; normalisation weights as |w|, within an ulp of |w| + eps."""
    for name in names or state:
        array = state[name]
        if name.endswith("num_batches_tracked"):
            assert exported[name].shape == ()
        elif is_norm_weight(name, array.shape):
            np.testing.assert_allclose(exported[name], np.abs(array), rtol=0, atol=2e-7)
        else:
            np.testing.assert_array_equal(exported[name], array, err_msg=name)


def imagenet_backbone_state(depth, seed):
    """What an ImageNet deep-stem ResNet file holds: the backbone and `fc`, no counters."""
    shapes = {
        name: shape
        for name, shape in official_shapes(depth).items()
        if name.startswith(("conv", "bn", "layer")) and not name.endswith("num_batches_tracked")
    }
    state = random_state_dict(depth, seed=seed, shapes=shapes)
    state["fc.weight"] = np.zeros((1000, 2048), "float32")
    state["fc.bias"] = np.zeros((1000,), "float32")
    return state
