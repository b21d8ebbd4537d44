"""How far two arrays are apart, as the tests measure it."""

import numpy as np


def relative_error(actual, expected, minimum_scale=0.0):
    """The largest `|actual - expected|`, relative to the largest `|expected|`.

    Computed in float64, so that the comparison itself adds no rounding.

    Args:
        actual: array-like, what was computed.
        expected: array-like of the same shape, the reference.
        minimum_scale: float, the smallest scale to divide by: 1.0 turns the error
            into an absolute one where `expected` is small everywhere.

    Returns:
        A float.

    Example:
    ```python
    assert relative_error(logits, reference_logits) < 1e-5
    ```
    """
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.abs(expected).max()), minimum_scale)
    return float(np.abs(np.asarray(actual, np.float64) - expected).max()) / scale
