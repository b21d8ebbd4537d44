"""Where the time of one call goes, by kind of TensorFlow op (TensorFlow only).

    python -m benchmarks.op_profile --kind training --precision bfloat16 --size 512 512 --batch 2

Builds the official preset as `benchmarks.authors` measures it (the same step:
`train_on_batch` after the default `compile()`, or the inference model in a
`tf.function`), runs it until it is traced, then records one call with
TensorFlow's profiler and sums the recorded op times by kind: convolutions
forward, the gradients of their input and kernel, BatchNormalization, the sampler's
kernels, resizing, casts and the rest. The op times are those of TensorFlow's
executor threads; two ops may run at once (inter-op parallelism), so their
sum can exceed the call's wall time, and each kind is reported as a share of
that sum.
"""

import argparse
import collections
import glob
import json
import os
import tempfile
import time

from benchmarks import backends

# Op types (as TensorFlow's CPU kernels name them, oneDNN's `_MklNative...`
# included) by the part of the computation they belong to. First match wins. Matrix
# products (AlignCM's pooling, as an einsum) count with the forward convolutions.
OP_KINDS = (
    ("convolution, kernel gradient", ("Conv2DBackpropFilter",)),
    ("convolution, input gradient", ("Conv2DBackpropInput",)),
    ("convolution, forward", ("Conv2D", "DepthwiseConv2dNative", "MatMul", "Einsum")),
    ("batch normalization", ("FusedBatchNorm",)),
    ("sampler (gather, scatter, crop-and-resize)", ("GatherV2", "UnsortedSegmentSum", "ScatterNd", "CropAndResize")),
    ("resizing", ("ResizeBilinear",)),
    ("casts", ("Cast",)),
)
OTHER = "other (elementwise, reductions, loss, optimizer)"


def op_kind(op_type):
    """The part of `OP_KINDS` an op type belongs to, `OTHER` if none."""
    for kind, markers in OP_KINDS:
        if any(marker in op_type for marker in markers):
            return kind
    return OTHER


def op_times(xplane_path):
    """`{op type: (seconds, calls)}` of the ops TensorFlow's executor threads ran."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    seconds, calls = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                op_type, new_call = event_op_type(plane, event)
                if op_type is not None:
                    seconds[op_type] += event.duration_ps / 1e12
                    calls[op_type] += new_call
    return {op_type: (seconds[op_type], calls[op_type]) for op_type in seconds}


def event_op_type(plane, event):
    """The op type of an executor thread's event and whether it starts a call;
    `(None, False)` for the executor's own events.

    A synchronous kernel's event is named `op name:op type`. An asynchronous one
    (`CropAndResize`, say) is recorded as the executor's `ProcessAsync::Start`
    and `::Done` events, which name the kernel's type in a statistic.
    """
    name = plane.event_metadata[event.metadata_id].name
    if name.startswith("ExecutorState::ProcessAsync"):
        stats = {plane.stat_metadata[stat.metadata_id].name: stat for stat in event.stats}
        if "kernel_type" not in stats:
            return None, False
        return plane.stat_metadata[stats["kernel_type"].ref_value].name, name.endswith("Start")
    if name.startswith("ExecutorState") or ":" not in name:
        return None, False
    return name.rsplit(":", 1)[1], True


def by_kind(times):
    """Op time and calls summed by `op_kind`, largest first, with each kind's share."""
    seconds, calls = collections.Counter(), collections.Counter()
    for op_type, (op_seconds, op_calls) in times.items():
        seconds[op_kind(op_type)] += op_seconds
        calls[op_kind(op_type)] += op_calls
    total = sum(seconds.values())
    return [
        {"kind": kind, "seconds": value, "calls": calls[kind], "share": value / total if total else 0.0}
        for kind, value in seconds.most_common()
    ]


def profile(kind, precision, size, batch, depth=101, warmup=2):
    """Profiles one call of our side's step: its wall time, op times by kind and by type."""
    import tensorflow as tf

    from benchmarks import authors

    images, labels = authors.random_batch(tuple(size), batch)
    step = authors.keras_step(kind, precision, images, labels, depth=depth)
    for _ in range(warmup):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        (xplane,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        times = op_times(xplane)
    return {
        "wall_seconds": wall,
        "kinds": by_kind(times),
        "op_types": {op_type: {"seconds": s, "calls": c} for op_type, (s, c) in times.items()},
    }


def format_report(result, top=15):
    total = sum(entry["seconds"] for entry in result["kinds"])
    lines = [f"wall time of the profiled call: {result['wall_seconds']:.3f} s; op time summed: {total:.3f} s",
             "", "| Kind | Op time (s) | Calls | Share |", "|---|---|---|---|"]
    lines += [f"| {e['kind']} | {e['seconds']:.3f} | {e['calls']} | {e['share']:.1%} |" for e in result["kinds"]]
    ranked = sorted(result["op_types"].items(), key=lambda item: -item[1]["seconds"])[:top]
    lines += ["", "| Op type | Op time (s) | Calls |", "|---|---|---|"]
    lines += [f"| {op_type} | {v['seconds']:.3f} | {v['calls']} |" for op_type, v in ranked]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("training", "inference"), default="training")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101))
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    backend = backends.select_backend()
    if backend != "tensorflow":
        parser.error(f"op_profile reads TensorFlow's profiler; KERAS_BACKEND is {backend!r}")
    result = profile(args.kind, args.precision, args.size, args.batch, depth=args.depth)
    print(json.dumps(result) if args.json else format_report(result))


if __name__ == "__main__":
    main()
