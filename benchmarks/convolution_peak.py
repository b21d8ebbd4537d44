"""The best convolution rate this machine reaches, and the fastest our network could be.

    python -m benchmarks.convolution_peak --precision bfloat16

Nearly all of AlignSeg's arithmetic is convolution (`alignseg info`: 99.5%). So no
implementation on this machine, ours or another, runs a forward pass faster than
its convolution multiply-adds at the best rate the machine reaches on
convolutions of the network's own shapes, whatever else it saves. This script
times such convolutions (forward, the backend's compiled function, minimum over
round-robin repeats) and counts the network's multiply-adds as this library
computes them (`model_cost(..., offset_heads="computed")`) for the goals'
configurations. `benchmarks.authors` runs it in every run and the report states,
beside each goal, the ratio to the authors' time that this bound allows.

For training the bound takes three times the forward's multiply-adds (the
backward pass computes, per convolution, the gradients of its input and of its
kernel, each as many multiply-adds as the forward) at the forward's best rate:
an estimate, since backward convolutions may run at another rate.
"""

import argparse
import json

from benchmarks.models import NUM_CLASSES

# (name, input (H, W, C_in), kernel size, C_out): convolutions of the official
# preset at 512x512, batch 1 (the encoder at strides 4, 16, 32; the decoder at 4).
SHAPES = (
    ("decoder 3x3 256->256 at 128x128", (128, 128, 256), 3, 256),
    ("decoder 1x1 256->256 at 128x128", (128, 128, 256), 1, 256),
    ("encoder 3x3 64->64 at 128x128", (128, 128, 64), 3, 64),
    ("encoder 1x1 1024->256 at 32x32", (32, 32, 1024), 1, 256),
    ("encoder 3x3 512->512 at 16x16", (16, 16, 512), 3, 512),
)
# The goals' configurations (benchmarks.authors.GOAL_CONFIGURATIONS).
INFERENCE_SIZE, INFERENCE_BATCH = (512, 512), 1
TRAINING_SIZE, TRAINING_BATCH = (512, 512), 2
# Forward + the gradients of each convolution's input and kernel.
TRAINING_PASSES = 3


def convolution_gflop(shape, kernel_size, filters):
    """GFLOP (2 per multiply-add) of a stride-1 'same' convolution of a `(B, H, W, C)` input."""
    batch, height, width, channels = shape
    return 2.0 * batch * height * width * channels * filters * kernel_size ** 2 / 1e9


def convolution_rates(precision, repeats):
    """GFLOP/s (2 per multiply-add) of each of `SHAPES`, forward, batch 1."""
    import numpy as np
    from keras import ops

    from benchmarks import backends
    from benchmarks.timing import interleaved_minimum

    rng = np.random.default_rng(0)
    candidates, flops = {}, {}
    for name, (height, width, channels), kernel_size, filters in SHAPES:
        images = ops.cast(rng.normal(size=(1, height, width, channels)), precision)
        kernel = ops.cast(rng.normal(size=(kernel_size, kernel_size, channels, filters)) * 0.05,
                          precision)
        convolve = backends.compiled(lambda x, k: ops.conv(x, k, padding="same"), xla=False)
        candidates[name] = lambda convolve=convolve, x=images, k=kernel: backends.block(convolve(x, k))
        flops[name] = convolution_gflop((1, height, width, channels), kernel_size, filters) * 1e9
    seconds = interleaved_minimum(candidates, repeats, warmup=2)
    return {name: flops[name] / seconds[name] / 1e9 for name in candidates}


def network_gflop(depth=101):
    """GFLOP of the goals' configurations of the official preset, as computed here."""
    from alignseg_keras import AlignSeg
    from alignseg_keras.model_cost import model_cost
    from alignseg_keras.models.presets import OFFICIAL_PRESETS

    model = AlignSeg.from_preset(OFFICIAL_PRESETS[depth], num_classes=NUM_CLASSES)
    inference = model_cost(model, INFERENCE_SIZE, INFERENCE_BATCH, offset_heads="computed")
    training = model_cost(model, TRAINING_SIZE, TRAINING_BATCH, offset_heads="computed")
    return {
        "inference_gflop": 2 * inference.macs / 1e9,
        "training_gflop": TRAINING_PASSES * 2 * training.training_macs / 1e9,
    }


def measure(precision, repeats=5):
    rates = convolution_rates(precision, repeats)
    return {"precision": precision, "peak_gflops": max(rates.values()), "rates": rates,
            **network_gflop()}


def bound_seconds(peak_entry, kind):
    """The fastest a pass of the goals' configuration `kind` could run on the machine."""
    return peak_entry[f"{kind}_gflop"] / peak_entry["peak_gflops"]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def main(argv=None):
    from benchmarks import backends

    backends.select_backend()
    args = parse(argv)
    print(json.dumps(measure(args.precision, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
