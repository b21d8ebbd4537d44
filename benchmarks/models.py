"""AlignSeg-R101 and the Keras ResNet-101 trunk: inference, sliding window, throughput."""

import numpy as np

from benchmarks import backends
from benchmarks.timing import interleaved_minimum

NUM_CLASSES = 19
PRESET = "alignseg_resnet101"  # the paper's model on keras.applications' ResNet-101
OFFICIAL_PRESET = "alignseg_resnet101_official"  # the authors' deep-stem network


def alignseg(preset=PRESET):
    from alignseg_keras import AlignSeg

    return AlignSeg.from_preset(preset, num_classes=NUM_CLASSES)


def resnet101_trunk():
    import keras

    return keras.applications.ResNet101(include_top=False, weights=None, input_shape=(None, None, 3))


def random_images(batch, height, width, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(batch, height, width, 3)).astype("float32")


def forward_candidates(models, images):
    """Compiled inference of each model, with and without XLA where that differs."""
    x = backends.device_array(images)
    candidates = {}
    for name, model in models.items():
        for xla in backends.xla_modes():
            function = backends.compiled(lambda inputs, m=model: m(inputs, training=False), xla)
            candidates[(name, backends.mode_name(xla))] = lambda f=function: backends.block(f(x))
    return candidates


def inference(repeats, quick=False, size=(512, 512)):
    """AlignSeg-R101 against the trunk alone, batch 1, side by side."""
    models = {"AlignSeg-R101": alignseg(), "ResNet-101 trunk": resnet101_trunk()}
    if not quick:
        models["AlignSeg-R101 official (deep stem)"] = alignseg(OFFICIAL_PRESET)
    best = interleaved_minimum(forward_candidates(models, random_images(1, *size)), repeats)
    results = []
    for (name, mode), seconds in best.items():
        entry = {
            "section": "inference",
            "key": f"inference {size[0]}x{size[1]} {name} {mode}",
            "model": name,
            "mode": mode,
            "size": list(size),
            "seconds": seconds,
        }
        if name != "ResNet-101 trunk":
            entry["ratio_to_trunk"] = seconds / best[("ResNet-101 trunk", mode)]
        results.append(entry)
    return results


def sliding_window(repeats, size=(1024, 2048), tile=769):
    """The paper's single-scale test: 769x769 windows with 1/3 overlap."""
    import time

    from alignseg_keras.inference import predict_sliding

    model = alignseg()
    image = random_images(1, *size)
    predict_sliding(model, image, tile_size=tile)  # traces the predict function
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict_sliding(model, image, tile_size=tile)
        best = min(best, time.perf_counter() - start)
    return [
        {
            "section": "sliding",
            "key": f"sliding {size[0]}x{size[1]} tile {tile}",
            "model": "AlignSeg-R101",
            "size": list(size),
            "tile": tile,
            "seconds": best,
        }
    ]


def throughput(repeats, size=(1024, 2048), batch=1):
    """Images per second of inference at full Cityscapes size (the JAX/GPU figure)."""
    models = {"AlignSeg-R101": alignseg(), "ResNet-101 trunk": resnet101_trunk()}
    images = random_images(batch, *size)
    best = interleaved_minimum(forward_candidates(models, images), repeats)
    return [
        {
            "section": "throughput",
            "key": f"throughput inference {size[0]}x{size[1]} {name} {mode}",
            "model": name,
            "mode": mode,
            "size": list(size),
            "batch": batch,
            "seconds": seconds,
            "images_per_second": batch / seconds,
        }
        for (name, mode), seconds in best.items()
    ]
