import math

import numpy as np
import pytest

from alignseg_keras.layers.adaptive_pooling import AdaptiveAveragePooling2D


def reference_pool(x, bins):
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], bins, bins, x.shape[3]))
    for k in range(bins):
        r0, r1 = (k * h) // bins, math.ceil((k + 1) * h / bins)
        for l in range(bins):
            c0, c1 = (l * w) // bins, math.ceil((l + 1) * w / bins)
            out[:, k, l] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("h,w,bins", [(9, 9, 3), (10, 7, 3), (17, 17, 6), (5, 4, 2), (2, 2, 3), (1, 1, 3)])
def test_matches_pytorch_bin_boundaries(h, w, bins):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype("float32")
    result = AdaptiveAveragePooling2D(bins)(x)
    np.testing.assert_allclose(np.asarray(result), reference_pool(x, bins), atol=1e-5)


def test_config_round_trip():
    layer = AdaptiveAveragePooling2D(6, name="p")
    assert AdaptiveAveragePooling2D.from_config(layer.get_config()).bins == 6
