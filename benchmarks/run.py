"""Benchmarks of alignseg_keras, side by side in one run; writes docs/benchmarks.md.

    python -m benchmarks.run                      # everything (about an hour on 2 CPU cores)
    python -m benchmarks.run --quick              # fewer repeats and configurations (minutes)
    python -m benchmarks.run --only alignment,inference

Sections: alignment (AlignmentLayer vs PyTorch grid_sample), inference
(AlignSeg-R101 vs the Keras ResNet-101 trunk at 512x512), training (steps at
512x512 batch 2 in float32 and mixed precision, XLA on and off, peak RSS),
data (tf.data augmentation throughput), sliding (1024x2048 sliding window) and
throughput (1024x2048 inference and training, for JAX on a GPU) and authors
(our model beside the authors' network in PyTorch: inference against the
image size, training against the crop and batch, float32 and bfloat16, time
and peak memory; `benchmarks/authors.py`). Every time is the minimum over
repeats; the alignment, inference and throughput-inference candidates run round-robin so
that load from other processes hits them alike (the training configurations, of the
training and throughput sections, and the authors' pairs run one after another in fresh
processes; tf.data is one timed pass). A section
that runs replaces its earlier rows (`report.record`). The backend is TensorFlow when it
is installed, else JAX (set KERAS_BACKEND to choose).
"""

import argparse
import importlib.util
import os
import sys

from benchmarks import backends

BACKEND = backends.select_backend()

from benchmarks import report  # noqa: E402
from benchmarks import timing  # noqa: E402

SECTIONS = ("alignment", "inference", "training", "data", "sliding", "throughput", "authors")
DEFAULT_SECTIONS = {
    "tensorflow": ("alignment", "inference", "training", "data", "sliding", "authors"),
    # authors runs PyTorch on the CPU: beside JAX on a GPU it would compare devices, not
    # implementations (benchmarks/gpu.py puts both on the GPU); --only authors on a
    # CPU-only JAX machine is a fair comparison.
    "jax": ("alignment", "inference", "training", "throughput"),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_configs(quick):
    """(policy, xla) pairs: mixed precision only where the hardware may gain from it."""
    if BACKEND == "jax":
        return [("float32", 1)] if quick else [("float32", 1), ("mixed_bfloat16", 1)]
    if quick:
        return [("float32", 0)]
    # mixed_float16 is left out on CPUs: TensorFlow has no fast float16
    # convolutions there (4 steps at 512x512 took more than 25 minutes).
    return [("float32", 0), ("float32", 1), ("mixed_bfloat16", 0), ("mixed_bfloat16", 1)]


def train_step(model, policy, xla, size, batch, repeats):
    """Runs `benchmarks.train_step` in a fresh process; returns its entry."""
    command = [
        sys.executable, "-m", "benchmarks.train_step", "--model", model, "--policy", policy,
        "--xla", str(xla), "--size", str(size[0]), str(size[1]), "--batch", str(batch),
        "--repeats", str(repeats),
    ]
    entry = timing.json_of_process(command, ROOT, BACKEND)
    mode = backends.mode_name(bool(xla))
    name = "AlignSeg-R101" if model == "alignseg" else "ResNet-101 trunk"
    entry.update(model=name, policy=policy, mode=mode, config=f"{policy}, {mode}", size=list(size), batch=batch)
    return entry


def training(repeats, quick):
    """One entry per configuration, each as soon as it is measured."""
    for policy, xla in training_configs(quick):
        entry = train_step("alignseg", policy, xla, (512, 512), 2, repeats)
        entry.update(section="training", key=f"training 512x512 b2 AlignSeg-R101 {entry['config']}")
        yield entry


def throughput(repeats, quick, size):
    from benchmarks import models

    yield from models.throughput(repeats, size)
    for model in ("alignseg", "trunk"):
        for policy, xla in training_configs(quick):
            entry = train_step(model, policy, xla, size, 1, repeats)
            entry.update(
                section="throughput",
                kind="training",
                images_per_second=1.0 / entry["seconds"],
                key=f"throughput training {size[0]}x{size[1]} {entry['model']} {entry['config']}",
            )
            yield entry


def run_section(section, args):
    repeats = args.repeats or (2 if args.quick else 5)
    if section == "alignment":
        from benchmarks import alignment

        return alignment.run(repeats, args.quick)
    if section == "inference":
        from benchmarks import models

        return models.inference(repeats, args.quick)
    if section == "training":
        return training(max(2, repeats - 2), args.quick)
    if section == "data":
        from benchmarks import data

        return data.pipeline_throughput(batches=10 if args.quick else 40)
    if section == "sliding":
        from benchmarks import models

        return models.sliding_window(1 if args.quick else 2)
    if section == "throughput":
        return throughput(max(2, repeats - 2), args.quick, tuple(args.throughput_size))
    if section == "authors":
        from benchmarks import authors

        return authors.run(args.repeats or (2 if args.quick else 3), args.quick, BACKEND)
    raise ValueError(section)


def available(section):
    """Sections that need a part of the project or a backend say why they cannot run."""
    if section == "authors" and importlib.util.find_spec("torch") is None:
        return "the authors' network runs on PyTorch, which is not installed (pip install torch)"
    if section in ("data", "sliding") and BACKEND != "tensorflow":
        return "tf.data and the sliding-window predictor are timed on the TensorFlow backend"
    if section == "data" and importlib.util.find_spec("alignseg_keras.data") is None:
        return "alignseg_keras.data is not there yet"
    if section == "sliding" and importlib.util.find_spec("alignseg_keras.inference") is None:
        return "alignseg_keras.inference is not there yet"
    return None


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate")
    parser.add_argument("--throughput-size", type=int, nargs=2, default=(1024, 2048))
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results.json"))
    parser.add_argument("--markdown", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print results, write nothing")
    args = parser.parse_args(argv)
    sections = args.only.split(",") if args.only else list(DEFAULT_SECTIONS[BACKEND])
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    args.sections = sections
    return args


def entry_summary(entry):
    """What a progress line says of an entry: its time, or a rate for a peak entry."""
    if "seconds" in entry:
        return f"{entry['seconds']:.4f} s"
    return f"{entry['peak_gflops']:.1f} GFLOP/s"


def main(argv=None):
    args = parse(argv)
    store = report.load(args.results)
    machine = timing.machine_info(BACKEND)
    print(f"{machine['cpu']}, {machine['cores']} cores, backend {BACKEND}", flush=True)
    for section in args.sections:
        reason = available(section)
        if reason:
            print(f"[{section}] skipped: {reason}", flush=True)
            continue
        print(f"[{section}] load average {timing.load_average():.1f}", flush=True)
        load_before = timing.load_average()
        # Entries are stored as they come, so a long section that is stopped
        # keeps what it measured.
        for entry in run_section(section, args):
            print(f"  {entry['key']}: {entry_summary(entry)}", flush=True)
            report.record(store, section, [entry], machine, load_before, timing.load_average())
            if not args.no_write:
                report.save(store, args.results)
                report.write_markdown(store, args.markdown)
    print("\n".join(report.target_rows(store)))


if __name__ == "__main__":
    main()
