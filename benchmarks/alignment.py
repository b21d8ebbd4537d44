"""AlignmentLayer forward and forward+backward against PyTorch's `F.grid_sample`.

Both sample bilinearly with zero padding and align_corners=True, at the same
positions (output pixel + offset), and the objective is `sum(output ** 2)`.
"""

import importlib.util

import numpy as np

from benchmarks import backends
from benchmarks.timing import interleaved_minimum

SHAPES = ((2, 128, 128, 256), (8, 64, 64, 256))


def random_inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=shape).astype("float32")
    offsets = rng.uniform(-2.0, 2.0, size=shape[:3] + (2,)).astype("float32")
    return features, offsets


def keras_candidates(features, offsets):
    from keras import ops

    from alignseg_keras.layers import AlignmentLayer

    layer = AlignmentLayer("standard")

    def forward(f, o, training=False):
        return layer([f, o], training=training)

    def objective(f, o):
        # As in a training step: on JAX's CPU the taps are then summed batched
        # (alignment.batches_taps).
        return ops.sum(ops.square(forward(f, o, training=True)))

    f, o = backends.device_array(features), backends.device_array(offsets)
    candidates = {}
    for xla in backends.xla_modes():
        mode = backends.mode_name(xla)
        run_forward = backends.compiled(forward, xla)
        run_both = backends.compiled(backends.with_gradients(objective, (0, 1)), xla)
        candidates[("forward", mode)] = lambda fn=run_forward: backends.block(fn(f, o))
        candidates[("forward+backward", mode)] = lambda fn=run_both: backends.block(fn(f, o))
    return candidates


def torch_sampler(height, width):
    """`F.grid_sample` at output pixel + offset (channel 0 vertical, as AlignmentLayer)."""
    import torch
    import torch.nn.functional as F

    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )

    def sample(features_nchw, offsets):
        x = (cols + offsets[..., 1]) * (2.0 / (width - 1)) - 1.0
        y = (rows + offsets[..., 0]) * (2.0 / (height - 1)) - 1.0
        grid = torch.stack([x, y], dim=-1)
        return F.grid_sample(
            features_nchw, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )

    return sample


def torch_candidates(features, offsets):
    import torch

    sample = torch_sampler(*features.shape[1:3])
    f = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous()
    o = torch.from_numpy(offsets)

    def run_forward():
        with torch.no_grad():
            sample(f, o)

    f_leaf, o_leaf = f.clone().requires_grad_(True), o.clone().requires_grad_(True)

    def run_both():
        f_leaf.grad = o_leaf.grad = None
        sample(f_leaf, o_leaf).square().sum().backward()

    return {("forward", "PyTorch"): run_forward, ("forward+backward", "PyTorch"): run_both}


def max_difference_to_torch(features, offsets):
    """Largest output difference on the first image: both compute the same thing."""
    import torch

    from alignseg_keras.layers import AlignmentLayer

    features, offsets = features[:1], offsets[:1]
    keras_output = np.asarray(AlignmentLayer("standard")([features, offsets]))
    f = torch.from_numpy(features).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        torch_output = torch_sampler(*features.shape[1:3])(f, torch.from_numpy(offsets))
    return float(np.abs(keras_output - torch_output.permute(0, 2, 3, 1).numpy()).max())


def run(repeats, quick=False):
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
    results = []
    for shape in SHAPES[:1] if quick else SHAPES:
        features, offsets = random_inputs(shape)
        candidates = keras_candidates(features, offsets)
        if has_torch:
            candidates.update(torch_candidates(features, offsets))
        best = interleaved_minimum(candidates, repeats)
        difference = max_difference_to_torch(features, offsets) if has_torch else None
        for (kind, mode), seconds in best.items():
            entry = {
                "section": "alignment",
                "key": f"alignment {shape} {kind} {mode}, {backends.backend()} run",
                "run": backends.backend(),
                "shape": list(shape),
                "kind": kind,
                "mode": mode,
                "seconds": seconds,
            }
            reference = best.get((kind, "PyTorch"))
            if reference and mode != "PyTorch":
                entry["ratio_to_pytorch"] = seconds / reference
                entry["max_difference_to_pytorch"] = difference
            results.append(entry)
    return results
