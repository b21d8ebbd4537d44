"""One configuration of training steps, run in its own process by `benchmarks.run`.

    python -m benchmarks.train_step --policy float32 --xla 0 --size 512 512 --batch 2

Prints one JSON line: the minimum step time over `--repeats` steps (after a
first step that traces and compiles), the first step's time, and the
process's resident memory before the first step and at its peak. A process of
its own keeps the peak memory and the dtype policy to this configuration.
"""

import argparse
import json
import time

from benchmarks import backends

backends.select_backend()


def parse(argv=None):
    from benchmarks import models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alignseg", choices=("alignseg", "trunk"))
    parser.add_argument("--preset", default=models.PRESET)
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--xla", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def build(args):
    import keras

    from benchmarks import models

    keras.mixed_precision.set_global_policy(args.policy)
    if args.model == "trunk":
        # The trunk's own training step: its stride-32 features against zeros.
        model = models.resnet101_trunk()
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse", jit_compile=bool(args.xla))
        return model, (args.size[0] // 32, args.size[1] // 32, 2048)
    model = models.alignseg(args.preset)
    model.compile(total_steps=1000, metrics=[], jit_compile=bool(args.xla))
    return model, None


def main(argv=None):
    import numpy as np

    from benchmarks import models
    from benchmarks.timing import current_rss_mib
    from benchmarks.timing import peak_rss_mib

    args = parse(argv)
    model, target_shape = build(args)
    images = models.random_images(args.batch, *args.size)
    if target_shape is None:
        targets = np.random.default_rng(0).integers(0, models.NUM_CLASSES, size=(args.batch, *args.size))
    else:
        targets = np.zeros((args.batch, *target_shape), "float32")
    rss_before = current_rss_mib()
    start = time.perf_counter()
    loss = model.train_on_batch(images, targets)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss = model.train_on_batch(images, targets)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "first_step_seconds": first,
                "loss": float(np.asarray(loss).ravel()[0]),
                "rss_before_mib": rss_before,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
