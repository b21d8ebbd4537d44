"""Where a profiled run's time went, from a Chrome-format trace (JAX's and PyTorch's).

    python -m benchmarks.trace_summary plugins/profile/<run>/<host>.trace.json.gz

`jax.profiler.trace(folder)` writes `<host>.trace.json.gz` (and
`perfetto_trace.json.gz` with `create_perfetto_trace=True`);
`torch.profiler.profile(...).export_chrome_trace(path)` writes a `.json`. Both
are Chrome trace events: complete events (`"ph": "X"`) with a start and a
duration in microseconds, grouped by process (`pid`) and thread, and metadata
events that name them. A GPU is a process of its own in both: JAX names it
`/device:GPU:0`; PyTorch's kernels carry the category `kernel` (copies
`gpu_memcpy`) and its GPU processes are labelled `GPU 0` (`process_labels`).

`summarize` gives, for every process with complete events, the time in which
any of its events ran (the union of their intervals: a GPU's busy time), the
span from its first start to its last end, and the events that took most of
its time by name; PyTorch's categories are summed too. No assumption about
which process is the device is needed to read it, and none is made.
"""

import argparse
import collections
import gzip
import json


def load_events(path):
    """The trace events of a `.json` or `.json.gz` Chrome trace."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        trace = json.load(handle)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def process_names(events):
    """`{pid: name}`: the process's name, with PyTorch's labels (`GPU 0`) after it."""
    names, labels = {}, {}
    for event in events:
        if event.get("ph") != "M":
            continue
        if event.get("name") == "process_name":
            names[event["pid"]] = str(event["args"]["name"])
        elif event.get("name") == "process_labels":
            labels[event["pid"]] = str(event["args"]["labels"])
    return {pid: f"{names.get(pid, pid)} [{labels[pid]}]" if pid in labels else str(names.get(pid, pid))
            for pid in set(names) | set(labels)}


def union_length(intervals):
    """Total length covered by `(start, end)` intervals, overlaps counted once."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def summarize(events, top=20):
    """`{process: {"busy_ms", "span_ms", "events", "by_name": [[name, ms, calls]...],
    "by_category": {category: ms}}}` for every process with complete events,
    the busiest first; `by_name` holds the `top` names of longest total time."""
    names = process_names(events)
    complete = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            complete[event.get("pid")].append(event)
    summary = {}
    for pid, items in complete.items():
        intervals = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in items]
        by_name, calls, by_category = collections.Counter(), collections.Counter(), collections.Counter()
        for event in items:
            by_name[event["name"]] += float(event["dur"]) / 1e3
            calls[event["name"]] += 1
            if "cat" in event:
                by_category[event["cat"]] += float(event["dur"]) / 1e3
        summary[names.get(pid, str(pid))] = {
            "busy_ms": union_length(intervals) / 1e3,
            "span_ms": (max(end for _, end in intervals) - min(start for start, _ in intervals)) / 1e3,
            "events": len(items),
            "by_name": [[name, ms, calls[name]] for name, ms in by_name.most_common(top)],
            "by_category": dict(by_category.most_common()),
        }
    return dict(sorted(summary.items(), key=lambda item: -item[1]["busy_ms"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="a .json or .json.gz Chrome trace")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(summarize(load_events(args.trace), args.top), indent=1))


if __name__ == "__main__":
    main()
