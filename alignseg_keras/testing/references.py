"""Slow NumPy implementations of the paper's formulas: independent references for tests."""

import numpy as np


def reference_alignment(features, offsets, mode):
    """A slow loop over Eq. 2: bilinear samples with zeros outside the map."""
    batch, in_h, in_w, channels = features.shape
    _, out_h, out_w, _ = offsets.shape
    output = np.zeros((batch, out_h, out_w, channels), np.float64)
    for b in range(batch):
        for i in range(out_h):
            for j in range(out_w):
                d0, d1 = offsets[b, i, j]
                if mode == "standard":
                    sy = (in_h - 1) / (out_h - 1) if out_h > 1 else 1.0
                    sx = (in_w - 1) / (out_w - 1) if out_w > 1 else 1.0
                    y, x = (i + d0) * sy, (j + d1) * sx
                else:
                    sy = in_h / (out_h - 1) if out_h > 1 else 0.0
                    sx = in_w / (out_w - 1) if out_w > 1 else 0.0
                    y = i * sy - 0.5 + d1 / 2
                    x = j * sx - 0.5 + d0 / 2
                for h in range(in_h):
                    wy = max(0.0, 1.0 - abs(y - h))
                    if wy == 0.0:
                        continue
                    for w in range(in_w):
                        wx = max(0.0, 1.0 - abs(x - w))
                        output[b, i, j] += features[b, h, w] * wy * wx
    return output


# (H_in, W_in, H_out, W_out) that exercise the sampler, degenerate sizes included.
ALIGNMENT_SIZES = [
    (5, 7, 5, 7),  # same size
    (4, 6, 9, 11),  # upsampling
    (9, 8, 4, 3),  # downsampling
    (3, 3, 8, 8),  # a small context grid to a large output, as AlignCM
    (1, 5, 4, 6),  # input of height 1
    (6, 4, 1, 5),  # output of height 1
    (5, 6, 3, 1),  # output of width 1
    (1, 1, 1, 1),
    (1, 1, 3, 2),
]
