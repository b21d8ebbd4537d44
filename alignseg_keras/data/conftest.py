import os

import numpy as np
import pytest
from PIL import Image


def _write(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(np.asarray(array), mode) if mode else Image.fromarray(np.asarray(array))
    image.save(path)
    return str(path)


@pytest.fixture
def write_image():
    """`write_image(path, array)` saves a uint8 array as PNG/JPEG (by suffix) and
    returns the path, creating folders."""
    return _write


@pytest.fixture
def random_image():
    """`random_image(height, width, seed)`: a uint8 RGB array."""

    def make(height, width, seed=0):
        return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)

    return make
