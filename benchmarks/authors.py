"""Our AlignSeg beside the authors' network, measured in one run on one machine.

    python -m benchmarks.run --only authors             # the tables (27-40 min on 2 AVX-512 cores)
    python -m benchmarks.run --only authors --quick     # the goals at 512x512, and 256x256 (~10 min)
    python -m benchmarks.authors --side torch --kind training --size 512 512 --batch 2
    python -m benchmarks.authors --side keras --kind inference --precision bfloat16 --frozen

Ours: the `alignseg_resnet101_official` preset (the authors' deep-stem ResNet-101
and decoder) on the Keras backend of the run: inference is `model(x,
training=False)` compiled (TensorFlow graph mode, the path `predict` takes on a
CPU; `jax.jit` on JAX; with `--frozen`, `FrozenInferenceModel`), with the
normalisations' statistics and the biases randomised as after training;
training is `train_on_batch` after the default `compile()` (SGD with poly LR,
cross-entropy + 0.4 x the deep-supervision loss; Keras leaves XLA off on
CPU-only TensorFlow). Theirs: the authors' network
re-implemented from the reference facts in PyTorch (`tests/torch_reference.py`,
the network of the equivalence test), eager, with SGD momentum 0.9 and the
same loss. Its InPlaceABN is arithmetic-exact but not in-place, so its memory
is that of BatchNorm + LeakyReLU, not of the authors' fused kernel; it runs
with PyTorch's default threads.

bfloat16 is Keras' `mixed_bfloat16` policy against `torch.autocast("cpu",
torch.bfloat16)`. Each measurement (side, kind, precision, size, batch) runs in
a fresh process, so that its peak resident memory (VmHWM) is its own; the two
sides of a configuration run one right after the other, and the ratio is
taken between them. Times are the minimum over the timed calls, after warm-up
calls that trace, compile and allocate. Each run also measures the machine's best
convolution rate (`benchmarks.convolution_peak`), which bounds how fast any
implementation of the network can be on it.
"""

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks.models import NUM_CLASSES

SIDES = ("keras", "torch")
KINDS = ("inference", "training")
PRECISIONS = ("float32", "bfloat16")
# The library's IGNORE_INDEX (alignseg_keras.checks) and compile()'s default weight of
# the deep-supervision loss, restated so that the PyTorch side's process does not import
# alignseg_keras (and with it Keras and TensorFlow, whose memory would count as theirs);
# tests/test_benchmarks.py checks that they agree.
IGNORE_INDEX = 255
AUX_LOSS_WEIGHT = 0.4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (size, batch) of each table: inference against the image size, training against
# the crop size and the batch. The authors train on 769x769 crops, two per GPU.
INFERENCE_SIZES = ((256, 256), (512, 512), (512, 1024), (1024, 1024), (1024, 2048))
TRAINING_SIZES = (((256, 256), 1), ((256, 256), 2), ((256, 256), 4), ((512, 512), 1), ((512, 512), 2),
                  ((769, 769), 1))
QUICK_INFERENCE_SIZES = ((256, 256), (512, 512))
QUICK_TRAINING_SIZES = (((256, 256), 1),)


def random_batch(size, batch, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(batch, *size, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=(batch, *size)).astype("int32")
    return images, labels


def keras_step(kind, precision, images, labels, depth=101, fold_batch_norm=None, frozen=False):
    """A call of our model (inference or one training step) that blocks until done.

    Inference runs the model as the library's inference functions do with
    `fold_batch_norm=None` (`inference_model`: in bfloat16 with
    BatchNormalization folded into the convolutions, in float32 as built),
    folded in any precision with True, as built with False; with `frozen`, as
    `FrozenInferenceModel` runs it (its weights graph constants; TensorFlow
    only). Its normalisations and biases are randomised as after training
    (`randomize_statistics`): a frozen graph drops the addition of a zero bias,
    which a trained model does not have.
    """
    import keras

    from alignseg_keras import AlignSeg
    from alignseg_keras.models.presets import OFFICIAL_PRESETS
    from alignseg_keras.testing import randomize_statistics
    from benchmarks import backends

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    model = AlignSeg.from_preset(OFFICIAL_PRESETS[depth], num_classes=NUM_CLASSES)
    if kind == "inference":
        randomize_statistics(model, biases=True)
        forward, inputs = keras_inference(model, precision, fold_batch_norm, frozen), backends.device_array(images)
        return lambda: backends.block(forward(inputs))
    model.compile(total_steps=10_000, metrics=[], aux_loss_weight=AUX_LOSS_WEIGHT)
    return lambda: model.train_on_batch(images, labels)


def keras_inference(model, precision, fold_batch_norm, frozen):
    """`model`'s compiled inference as `keras_step` describes it."""
    from alignseg_keras.batch_norm_folding import fold_batch_normalization
    from alignseg_keras.inference import inference_model
    from benchmarks import backends

    if frozen:
        if fold_batch_norm is not None:
            raise ValueError("A frozen model is folded as `inference_model` folds it; leave fold_batch_norm None.")
        from alignseg_keras.frozen_inference import FrozenInferenceModel

        return FrozenInferenceModel(model, precision)
    if fold_batch_norm is None:
        model = inference_model(model, precision)
    elif fold_batch_norm:
        model = fold_batch_normalization(model)
    return backends.compiled(lambda x: model(x, training=False), xla=backends.backend() == "jax")


def torch_training_loss(outputs, labels):
    """The authors' training loss on their network's `(logits, aux_logits)`: cross-entropy
    with the ignore label on both heads, the deep-supervision head weighted as ours."""
    import torch.nn.functional as F

    logits, aux_logits = outputs
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    return loss + AUX_LOSS_WEIGHT * F.cross_entropy(aux_logits.float(), labels, ignore_index=IGNORE_INDEX)


def torch_step(kind, precision, images, labels, depth=101, device="cpu"):
    """A call of the authors' network in PyTorch (inference or one SGD step), blocking."""
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import ReferenceAlignSeg
    from torch_reference import randomize

    device = torch.device(device)
    model = randomize(ReferenceAlignSeg(NUM_CLASSES, depth)).to(device)
    bfloat16 = precision == "bfloat16"
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    host_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    if kind == "inference":
        model.eval()
        inputs = host_images.to(device)

        def infer():
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
                model(inputs)
            synchronize()

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    # The momentum buffers exist before the first step, as ours do once `compile()` has
    # built the optimizer, so that "RSS before" holds both sides' optimizer state. From
    # zeros, PyTorch's first step stores 0.9 * 0 + d = d, as it does without a buffer.
    for parameter in model.parameters():
        optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    host_labels = torch.from_numpy(labels).long()
    if device.type == "cuda":
        host_images, host_labels = host_images.pin_memory(), host_labels.pin_memory()

    def train_step():
        # Host arrays copied to the device each step, as a data loader's batches are.
        batch_images = host_images.to(device, non_blocking=True)
        batch_labels = host_labels.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=bfloat16):
            loss = torch_training_loss(model(batch_images), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize()
        return loss.detach()

    train_step.optimizer = optimizer
    return train_step


def timed_calls(step, repeats, warmup):
    """Seconds of each of `repeats` calls after `warmup` untimed ones; and the first call's."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times, first


def measure(side, kind, precision, size, batch, repeats=3, warmup=2, depth=101, frozen=False):
    """One configuration in this process: the seconds to build the step (the model, and
    its freezing with `frozen`, which runs our inference as `FrozenInferenceModel`:
    `keras_step`), the calls' times and resident memory (MiB)."""
    from benchmarks.timing import resident_memory_after
    from benchmarks.timing import resident_memory_before

    images, labels = random_batch(tuple(size), batch)
    start = time.perf_counter()
    if side == "keras":
        step = keras_step(kind, precision, images, labels, depth=depth, frozen=frozen)
    else:
        step = torch_step(kind, precision, images, labels, depth=depth)
    setup = time.perf_counter() - start
    before = resident_memory_before()
    times, first = timed_calls(step, repeats, warmup)
    return {
        "setup_seconds": setup,
        "seconds": min(times),
        "median_seconds": statistics.median(times),
        "first_call_seconds": first,
        **resident_memory_after(before),
    }


def measure_in_fresh_process(side, kind, precision, size, batch, repeats, backend):
    """`measure` in a fresh process (its own peak memory and dtype policy)."""
    from benchmarks.timing import json_of_process

    command = [sys.executable, "-m", "benchmarks.authors", "--side", side, "--kind", kind,
               "--precision", precision, "--size", *map(str, size), "--batch", str(batch),
               "--repeats", str(repeats)]
    return json_of_process(command, ROOT, backend)


# The configurations of the goals come first, so that a run stopped early has them.
GOAL_CONFIGURATIONS = (("inference", (512, 512), 1), ("training", (512, 512), 2))


def configurations(quick):
    """(kind, precision, size, batch): the goals' first, then the rest of the tables."""
    inference = QUICK_INFERENCE_SIZES if quick else INFERENCE_SIZES
    training = QUICK_TRAINING_SIZES if quick else TRAINING_SIZES
    tables = [("inference", size, 1) for size in inference] + [("training", size, batch) for size, batch in training]
    for kind, size, batch in (*GOAL_CONFIGURATIONS, *(c for c in tables if c not in GOAL_CONFIGURATIONS)):
        for precision in PRECISIONS:
            yield kind, precision, size, batch


def entry_key(kind, precision, size, batch, side):
    return f"authors {kind} {size[0]}x{size[1]} b{batch} {precision} {side}"


def peak_in_fresh_process(precision, repeats, backend):
    """`benchmarks.convolution_peak` in a fresh process: the machine's best convolution
    rate in `precision` and the goals' multiply-adds, for the bound of the report."""
    from benchmarks.timing import json_of_process

    command = [sys.executable, "-m", "benchmarks.convolution_peak", "--precision", precision,
               "--repeats", str(max(repeats, 5))]
    return json_of_process(command, ROOT, backend)


def run(repeats, quick, backend):
    """The machine's convolution peak in each precision, then both sides of every
    configuration, one right after the other; yields entries, each marked with the
    run it belongs to (ratios are only taken within a run)."""
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    for precision in PRECISIONS:
        entry = peak_in_fresh_process(precision, repeats, backend)
        entry.update(section="authors", run=run_id, side="keras", kind="peak",
                     key=f"authors peak {precision}")
        yield entry
    for kind, precision, size, batch in configurations(quick):
        measured = {}
        for side in SIDES:
            entry = measure_in_fresh_process(side, kind, precision, size, batch, repeats, backend)
            entry.update(section="authors", run=run_id, side=side, kind=kind, precision=precision, size=list(size),
                         batch=batch, key=entry_key(kind, precision, size, batch, side))
            measured[side] = entry
        add_ratios(measured["keras"], measured["torch"])
        yield from measured.values()


def add_ratios(ours, theirs):
    """Our time and peak memory over theirs, stored in our entry."""
    ours["ratio_to_authors"] = ours["seconds"] / theirs["seconds"]
    ours["memory_ratio_to_authors"] = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
    ours["anonymous_memory_ratio_to_authors"] = ours["peak_anonymous_mib"] / theirs["peak_anonymous_mib"]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--depth", type=int, choices=(50, 101), default=101)
    parser.add_argument("--frozen", action="store_true",
                        help="our inference with the weights frozen into the graph (FrozenInferenceModel)")
    args = parser.parse_args(argv)
    if args.frozen and (args.side, args.kind) != ("keras", "inference"):
        parser.error("--frozen is for --side keras --kind inference")
    return args


def main(argv=None):
    from benchmarks import backends

    backends.select_backend()
    args = parse(argv)
    result = measure(args.side, args.kind, args.precision, args.size, args.batch,
                     repeats=args.repeats, warmup=args.warmup, depth=args.depth, frozen=args.frozen)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
