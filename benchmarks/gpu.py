"""AlignSeg-R101 on one GPU beside the authors' PyTorch network, in one run.

    python -m benchmarks.gpu --output gpu.json              # all four configurations
    python -m benchmarks.gpu --side jax --precision float32  # one, prints one JSON line

Each configuration (side x precision) runs in a process of its own, one after
the other on the same GPU, so that each has the whole card and its own peak
memory:

- `jax`: our `alignseg_resnet101_official` preset (the authors' deep-stem
  network) on Keras' JAX backend; inference through `model.stateless_call`
  under `jax.jit`, training through `model.train_on_batch` with the paper's
  `compile()` (SGD, poly LR, CE + 0.4 x deep supervision, XLA).
- `torch`: the authors' network re-implemented from the reference facts
  (`tests/torch_reference.py`, the network of the equivalence test), in
  eager PyTorch with cuDNN autotuning (`cudnn.benchmark`, as the authors'
  scripts set it), SGD momentum 0.9 and the same loss (`benchmarks.authors`,
  shared with the CPU tables). Its InPlaceABN is
  arithmetic-exact but not in-place, so its memory is that of plain BatchNorm
  + LeakyReLU, not of the authors' fused kernel.

float32 lets both sides use TF32 tensor cores for convolutions (each
framework's default on Ampere and later; recorded in the output); bfloat16 is
Keras' `mixed_bfloat16` policy against `torch.autocast("cuda", torch.bfloat16)`.
Times are per step after warm-up (compilation, cuDNN autotuning): the median
and the minimum of `--repeats` synchronised steps. Training batches are
host arrays on both sides (copied to the GPU each step); on JAX the step is
also timed on a batch already on the GPU (`training_batch_on_device`), which
leaves the copy out.

Memory is reported twice, because both frameworks' convolution autotuners
take large workspaces from the same allocator during warm-up (in float32,
tens of GiB): `peak_gpu_memory_gib` (training) and
`inference_peak_gpu_memory_gib` are the allocator's peak including warm-up;
`steady_gpu_memory_gib` and `inference_steady_gpu_memory_gib` are the memory
the timed calls need. On
PyTorch that is `max_memory_allocated` over the timed calls alone (the peak
is reset after the first call); on JAX, whose allocator peak cannot be reset,
it is XLA's buffer assignment of the compiled program (arguments + outputs -
donated + temporaries, `memory_analysis()` of the executable that ran).

With `--profile-steps N`, each side then records N more training steps with its
framework's profiler (`jax.profiler.trace`, `torch.profiler.profile` with the
GPU's activity) and stores `training_profile`: per process of the trace (the
GPU is one), its busy time, its span and the kernels that took most of it
(`benchmarks.trace_summary`), so a run on a lent GPU brings back where a step's
time goes without the trace files themselves.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.authors import AUX_LOSS_WEIGHT
from benchmarks.authors import NUM_CLASSES
from benchmarks.authors import timed_calls
from benchmarks.models import OFFICIAL_PRESET
from benchmarks.timing import code_version
from benchmarks.trace_summary import load_events
from benchmarks.trace_summary import summarize

SIDES = ("jax", "torch")
PRECISIONS = ("float32", "bfloat16")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=SIDES)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--preset", default=OFFICIAL_PRESET)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048))
    parser.add_argument("--train-size", type=int, nargs=2, default=(1024, 2048))
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per configuration")
    parser.add_argument("--output", help="JSON file of all results (driver mode)")
    parser.add_argument("--inference-only", action="store_true")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    parser.add_argument("--torch-device", default="cuda", help="cpu only to check the script")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="training steps to record with each side's profiler (training_profile)")
    return parser.parse_args(argv)


def summary(times):
    return {"median_seconds": statistics.median(times), "min_seconds": min(times)}


def batches(args, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, size=(1, *args.size, 3)).astype("float32")
    train_images = rng.uniform(0, 255, size=(args.train_batch, *args.train_size, 3)).astype("float32")
    train_labels = rng.integers(0, NUM_CLASSES, size=(args.train_batch, *args.train_size)).astype("int32")
    return image, train_images, train_labels


def timed(step, repeats, warmup=2):
    return timed_calls(step, repeats, warmup)[0]


def program_memory_gib(compiled):
    """The device memory an XLA executable needs while it runs (GiB): its buffer assignment."""
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    held = (stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    return held / 2**30


def run_jax(args, emit):
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    from alignseg_keras import AlignSeg

    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = AlignSeg.from_preset(args.preset, num_classes=NUM_CLASSES)
    image, train_images, train_labels = batches(args)

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, frozen, images):
        outputs, _ = model.stateless_call(trainable, frozen, images, training=False)
        return outputs

    device_image = jax.device_put(image)
    start = time.perf_counter()
    jax.block_until_ready(forward(trainable, frozen, device_image))
    inference_compile = time.perf_counter() - start
    inference = timed(lambda: jax.block_until_ready(forward(trainable, frozen, device_image)), args.repeats)
    stats = jax.devices()[0].memory_stats() or {}
    result = {
        "inference": summary(inference),
        "inference_first_call_seconds": inference_compile,
        "inference_peak_gpu_memory_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
        "framework": f"keras {keras.__version__}, jax {jax.__version__}",
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
    }
    emit(result)  # the timings stand even if an analysis below outlasts the timeout
    # The executable that ran: jit's cache returns it for the same function and shapes.
    result["inference_steady_gpu_memory_gib"] = program_memory_gib(
        forward.lower(trainable, frozen, device_image).compile()
    )
    if args.inference_only:
        return result

    model.compile(total_steps=10_000, metrics=[], jit_compile=True, aux_loss_weight=AUX_LOSS_WEIGHT)
    start = time.perf_counter()
    loss = model.train_on_batch(train_images, train_labels)
    train_compile = time.perf_counter() - start
    training = timed(lambda: model.train_on_batch(train_images, train_labels), max(3, args.repeats // 2))
    stats = jax.devices()[0].memory_stats() or {}
    result = {
        **result,
        "training": summary(training),
        "training_first_step_seconds": train_compile,
        "loss": float(np.asarray(loss).ravel()[0]),
        "peak_gpu_memory_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
    }
    emit(result)
    # The same step on a batch already on the GPU (as `fit`'s prefetching puts it there): the
    # difference to "training" is the host-to-GPU copy of the batch from pageable memory.
    device_images, device_labels = jax.device_put(train_images), jax.device_put(train_labels)
    on_device = timed(lambda: model.train_on_batch(device_images, device_labels), max(3, args.repeats // 2))
    result["training_batch_on_device"] = summary(on_device)
    if args.profile_steps:
        result["training_profile"] = jax_profile(
            lambda: model.train_on_batch(device_images, device_labels), args.profile_steps
        )
        emit(result)
    # Keras' JAX trainer runs jax.jit(model.train_step, donate_argnums=0) on this state;
    # lowering the same function on the same shapes returns that executable from jit's cache.
    model.jax_state_sync()
    state = model._get_jax_state(
        trainable_variables=True, non_trainable_variables=True,
        optimizer_variables=True, metrics_variables=True,
    )
    train_step = jax.jit(model.train_step, donate_argnums=0)
    result["steady_gpu_memory_gib"] = program_memory_gib(
        train_step.lower(state, (train_images, train_labels, None)).compile()
    )
    return result


def run_torch(args, emit):
    import torch

    from benchmarks.authors import torch_step

    torch.backends.cudnn.benchmark = True
    cuda = args.torch_device.startswith("cuda")

    def peak_memory_gib():
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    def steady(step, repeats):
        """Times after warm-up; the peak with the first (autotuning) call, and without it."""
        step()
        with_autotuning = peak_memory_gib()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = timed(step, repeats)
        timed_peak = peak_memory_gib()
        return times, max(with_autotuning, timed_peak), timed_peak

    image, train_images, train_labels = batches(args)
    infer = torch_step("inference", args.precision, image, None, device=args.torch_device)
    inference, peak, steady_peak = steady(infer, args.repeats)
    result = {
        "inference": summary(inference),
        "inference_peak_gpu_memory_gib": peak,
        "inference_steady_gpu_memory_gib": steady_peak,
        "framework": f"torch {torch.__version__}",
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    if args.inference_only:
        return result
    del infer
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    train_step = torch_step("training", args.precision, train_images, train_labels, device=args.torch_device)
    losses = []
    training, peak, steady_peak = steady(lambda: losses.append(train_step()), max(3, args.repeats // 2))
    result = {
        **result,
        "training": summary(training),
        "loss": float(losses[-1]),
        "peak_gpu_memory_gib": peak,
        "steady_gpu_memory_gib": steady_peak,
    }
    if args.profile_steps:
        emit(result)
        result["training_profile"] = torch_profile(train_step, args.profile_steps, cuda)
    return result


def jax_profile(step, steps):
    """`trace_summary.summarize` of `steps` calls of `step` under JAX's profiler."""
    import jax

    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(steps):
                step()
        (path,) = glob.glob(os.path.join(folder, "plugins", "profile", "*", "*.trace.json.gz"))
        return summarize(load_events(path))


def torch_profile(step, steps, cuda):
    """`trace_summary.summarize` of `steps` calls of `step` under PyTorch's profiler."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profile.export_chrome_trace(path)
        return summarize(load_events(path))


def one(args):
    """Runs one configuration and prints it as a JSON line (and, before long analyses, its timings)."""

    def emit(partial):
        print(json.dumps(described(args, dict(partial))), flush=True)

    run = run_jax if args.side == "jax" else run_torch
    emit(run(args, emit))


def described(args, result):
    result.update(
        side=args.side,
        precision=args.precision,
        inference_size=list(args.size),
        train_size=list(args.train_size),
        train_batch=args.train_batch,
    )
    result["inference_images_per_second"] = 1.0 / result["inference"]["median_seconds"]
    if "training" in result:
        result["training_images_per_second"] = args.train_batch / result["training"]["median_seconds"]
    return result


def last_json_line(output):
    output = output.decode(errors="replace") if isinstance(output, bytes) else (output or "")
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def gpu_name():
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def drive(args):
    """Runs every configuration in its own process; a failure is recorded, not fatal."""
    common = [
        "--preset", args.preset, "--repeats", str(args.repeats),
        "--size", *map(str, args.size), "--train-size", *map(str, args.train_size),
        "--train-batch", str(args.train_batch), "--torch-device", args.torch_device,
        "--profile-steps", str(args.profile_steps),
        *(["--inference-only"] if args.inference_only else []),
    ]
    results = {"gpu": gpu_name(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "code": code_version(), "arguments": vars(args), "runs": []}
    for precision in args.precisions:
        for side in SIDES:
            command = [sys.executable, "-m", "benchmarks.gpu", "--side", side,
                       "--precision", precision, *common]
            start = time.perf_counter()
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                entry = last_json_line(done.stdout)
                if done.returncode != 0 or entry is None:
                    entry = {**(entry or {}), "side": side, "precision": precision,
                             "error": done.stderr[-3000:]}
            except subprocess.TimeoutExpired as timeout:
                # What the configuration printed before the limit (its timings) is kept.
                entry = {**(last_json_line(timeout.stdout) or {}), "side": side,
                         "precision": precision, "error": f"timeout {args.timeout} s"}
            entry["process_seconds"] = time.perf_counter() - start
            print(json.dumps(entry), flush=True)
            results["runs"].append(entry)
            if args.output:
                _replace_json(args.output, results)
    return results


def _replace_json(path, results):
    """Replaces `path` with `results` whole (a kill leaves the previous file). Not
    `timing.write_atomic`: that imports alignseg_keras, hence Keras and JAX, into this
    driver, which must leave the GPU to its configurations' processes."""
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        json.dump(results, handle, indent=1)
    os.replace(partial, path)


def main(argv=None):
    args = parse(argv)
    if args.side is None:
        drive(args)
    else:
        one(args)


if __name__ == "__main__":
    main()
