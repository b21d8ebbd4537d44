"""The results store (benchmarks/results.json) and the Markdown tables of docs/benchmarks.md.

A run replaces the sections it measures and keeps the others, so `--only alignment`
refreshes the alignment rows alone; a section's rows (of one backend) are always of one
run, the one its "Where and when" row names. A ratio between two sections (tf.data
against a training step) is taken only when both are of one run. The tables are written
between two marker lines of docs/benchmarks.md; the text around them is kept.
"""

import json
import os

BEGIN = "<!-- BEGIN GENERATED RESULTS: python -m benchmarks.run -->"
END = "<!-- END GENERATED RESULTS -->"

# Goals on the project's 2-core CPU machine (docs/benchmarks.md explains them).
ALIGNMENT_GOAL = 0.5  # AlignmentLayer fwd+bwd / PyTorch grid_sample fwd+bwd
INFERENCE_GOAL = 1.6  # AlignSeg-R101 / ResNet-101 trunk, inference at 512x512
TRAINING_GOAL = 10.0  # seconds per training step, 512x512, batch 2
DATA_GOAL = 5.0  # tf.data images/s over the images/s a training step consumes
# Beside the authors' network in the same run (benchmarks/authors.py), best precision of
# each side: our time over theirs at 512x512 (inference batch 1, training batch 2), and
# float32 inference no slower than when the goal was set (0.83-0.89x).
AUTHORS_INFERENCE_GOAL = 0.35
AUTHORS_TRAINING_GOAL = 0.40
AUTHORS_FLOAT32_INFERENCE_GOAL = 0.89


def load(path):
    if not os.path.exists(path):
        return {"sections": {}, "entries": {}}
    with open(path) as handle:
        store = json.load(handle)
    for entry in store["entries"].values():
        if "backend" not in entry:
            _stamp_unstamped(store, entry)
    return store


def _stamp_unstamped(store, entry):
    """An entry stored before entries named their run (2026-12-08): its backend (from the
    alignment rows' run column, or a JAX mode's name) and the date of its section's run,
    the run that last measured it (each run then re-measured a whole section)."""
    if entry["section"] == "alignment":
        backend = entry["run"]
    else:
        backend = "jax" if "jax" in str(entry.get("mode", "")) else "tensorflow"
    section = store["sections"].get(f"{entry['section']}, {backend}")
    entry.update(backend=backend, measured=section["machine"]["date"] if section else None)


def save(store, path):
    """Writes the store atomically: a kill while writing leaves the old one."""
    from benchmarks.timing import write_atomic

    write_atomic(path, json.dumps(store, indent=1, sort_keys=True) + "\n")


def record(store, section, entries, machine, load_before, load_after):
    """Stores `entries` of `section`, measured on `machine` (`timing.machine_info`, taken
    once a run: its date names the run), each stamped with that date and the backend.

    The first entries of a new run of a section replace all of that section's entries of
    the backend: a quick or partial run shows the rows it measured, never beside rows of
    an earlier run (or machine) that the section's "Where and when" row would not name."""
    key = f"{section}, {machine['backend']}"
    if store["sections"].get(key, {}).get("machine", {}).get("date") != machine["date"]:
        for name, entry in list(store["entries"].items()):
            if entry["section"] == section and entry.get("backend") == machine["backend"]:
                del store["entries"][name]
    store["sections"][key] = {
        "machine": machine,
        "load_before": load_before,
        "load_after": load_after,
    }
    for entry in entries:
        store["entries"][entry["key"]] = dict(entry, backend=machine["backend"],
                                              measured=machine["date"])


def _entries(store, section):
    return [e for e in store["entries"].values() if e["section"] == section]


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _met(value, goal, lower_is_better=True):
    if value is None:
        return "not measured"
    ok = value <= goal if lower_is_better else value >= goal
    return "yes" if ok else "no"


def _fmt(value, digits=2, unit=""):
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _best(entries, key, **match):
    values = [e[key] for e in entries if key in e and all(e.get(k) == v for k, v in match.items())]
    return min(values) if values else None


def target_rows(store):
    alignment = _entries(store, "alignment")
    inference = _entries(store, "inference")
    training = [e for e in _entries(store, "training") if e.get("model") == "AlignSeg-R101"]
    data = _entries(store, "data")
    rows = []
    for mode in sorted({e["mode"] for e in alignment if "ratio_to_pytorch" in e}):
        ratios = [e["ratio_to_pytorch"] for e in alignment if e["kind"] == "forward+backward" and e["mode"] == mode]
        worst = max(ratios) if ratios else None
        rows.append(
            [f"AlignmentLayer fwd+bwd ({mode}), worst shape", f"<= {ALIGNMENT_GOAL}x PyTorch grid_sample",
             _fmt(worst, unit="x"), _met(worst, ALIGNMENT_GOAL)]
        )
    for mode in sorted({e["mode"] for e in inference}):
        ratio = _best(inference, "ratio_to_trunk", model="AlignSeg-R101", mode=mode)
        rows.append(
            [f"AlignSeg-R101 inference 512x512 ({mode})", f"<= {INFERENCE_GOAL}x ResNet-101 trunk",
             _fmt(ratio, unit="x"), _met(ratio, INFERENCE_GOAL)]
        )
    step = min(training, key=lambda e: e["seconds"]) if training else None
    rows.append(
        ["Training step 512x512, batch 2 (best configuration)", f"<= {TRAINING_GOAL:.0f} s",
         "n/a" if step is None else f"{step['seconds']:.2f} s ({step['config']})",
         _met(step and step["seconds"], TRAINING_GOAL)]
    )
    ratio, text = _data_ratio(data, training)
    rows.append(
        ["tf.data full augmentation vs a training step's consumption", f">= {DATA_GOAL:.0f}x",
         text, _met(ratio, DATA_GOAL, lower_is_better=False)]
    )
    return _table(["Target", "Goal", "Measured", "Met"], rows + authors_target_rows(store))


def _data_ratio(data, training):
    """tf.data's images/s over those the fastest training step of the same run (and
    backend) consumes, and its cell: a pipeline is never divided by a step of another run
    or machine."""
    if not (training and data):
        return None, "n/a"
    same_run = [e for e in training if (e.get("measured"), e.get("backend")) ==
                (data[0].get("measured"), data[0].get("backend"))]
    if not same_run:
        return None, "not measured in one run"
    step = min(same_run, key=lambda e: e["seconds"])
    ratio = data[0]["images_per_second"] / (step["batch"] / step["seconds"])
    return ratio, _fmt(ratio, 1, "x")


def _authors_pair(entries, kind, size, batch, precision):
    """(ours, theirs) entries of one configuration, or None where either is missing."""
    found = {e["side"]: e for e in entries
             if e["kind"] == kind and (tuple(e["size"]), e["batch"], e["precision"]) == (size, batch, precision)}
    return (found["keras"], found["torch"]) if {"keras", "torch"} <= set(found) else None


def authors_best_ratio(entries, kind, size, batch):
    """Our best time over theirs (each side at its faster precision), from one run only;
    with the smallest ratio that the machine's convolution peak of that run allows."""
    pairs = [p for p in (_authors_pair(entries, kind, size, batch, q) for q in ("float32", "bfloat16")) if p]
    if not pairs or len({e["run"] for pair in pairs for e in pair}) != 1:
        return None, "not measured in one run"
    ours = min(pairs, key=lambda pair: pair[0]["seconds"])[0]
    theirs = min(pairs, key=lambda pair: pair[1]["seconds"])[1]
    ratio = ours["seconds"] / theirs["seconds"]
    text = (f"{ratio:.2f}x ({ours['seconds']:.2f} s {ours['precision']} against "
            f"{theirs['seconds']:.2f} s {theirs['precision']})")
    bound = _peak_bound(entries, kind, ours["run"])
    if bound is not None:
        text += (f"; at this machine's best convolution rate at least {bound / theirs['seconds']:.2f}x "
                 f"({bound:.2f} s)")
    return ratio, text


def _peak_bound(entries, kind, run):
    """The fastest the goal's configuration could run, at the best rate measured in `run`."""
    from benchmarks.convolution_peak import bound_seconds

    peaks = [e for e in entries if e["kind"] == "peak" and e["run"] == run]
    return min((bound_seconds(e, kind) for e in peaks), default=None)


def authors_target_rows(store):
    entries = _entries(store, "authors")
    rows = []
    for kind, batch, goal in (("inference", 1, AUTHORS_INFERENCE_GOAL), ("training", 2, AUTHORS_TRAINING_GOAL)):
        ratio, text = authors_best_ratio(entries, kind, (512, 512), batch)
        rows.append([f"{kind.capitalize()} 512x512, batch {batch}, beside the authors' network "
                     "(best precision of each side)", f"<= {goal}x theirs", text, _met(ratio, goal)])
    pair = _authors_pair(entries, "inference", (512, 512), 1, "float32")
    ratio = pair[0]["ratio_to_authors"] if pair else None
    rows.append(["Inference 512x512, batch 1, float32, beside the authors' network",
                 f"<= {AUTHORS_FLOAT32_INFERENCE_GOAL}x theirs", _fmt(ratio, unit="x"),
                 _met(ratio, AUTHORS_FLOAT32_INFERENCE_GOAL)])
    return rows


def _gib(mib):
    return _fmt(mib / 1024)


def _anonymous_peak_cells(ours, theirs):
    """The peaks less the file-backed pages (`benchmarks.timing.file_backed_rss_mib`) and their
    ratio (`authors.add_ratios`); empty for runs from before they were recorded."""
    if not all(key in entry for entry, key in ((ours, "peak_anonymous_mib"), (theirs, "peak_anonymous_mib"),
                                               (ours, "anonymous_memory_ratio_to_authors"))):
        return ["", ""]
    return [f"{_gib(ours['peak_anonymous_mib'])} / {_gib(theirs['peak_anonymous_mib'])}",
            _fmt(ours["anonymous_memory_ratio_to_authors"], unit="x")]


def authors_lines(store):
    entries = _entries(store, "authors")
    ours = sorted((e for e in entries if e["side"] == "keras" and e["kind"] != "peak"),
                  key=lambda e: (e["kind"], e["precision"], e["size"][0] * e["size"][1] * e["batch"], e["batch"]))
    lines = []
    for kind, title in (("inference", "Inference, batch 1: time and peak memory against the image size"),
                        ("training", "Training step: time and peak memory against the crop and the batch")):
        rows = []
        for entry in (e for e in ours if e["kind"] == kind):
            pair = _authors_pair(entries, kind, tuple(entry["size"]), entry["batch"], entry["precision"])
            if pair is None:
                continue
            theirs = pair[1]
            rows.append([
                "x".join(map(str, entry["size"])), entry["batch"], entry["precision"],
                _fmt(entry["seconds"], 3), _fmt(theirs["seconds"], 3), _fmt(entry["ratio_to_authors"], unit="x"),
                f"{_gib(entry['rss_before_mib'])} / {_gib(entry['peak_rss_mib'])}",
                f"{_gib(theirs['rss_before_mib'])} / {_gib(theirs['peak_rss_mib'])}",
                _fmt(entry["memory_ratio_to_authors"], unit="x"),
                *_anonymous_peak_cells(entry, theirs),
            ])
        if rows:
            lines += ["", f"### Beside the authors' network. {title}", ""]
            lines += _table(["Size", "Batch", "Precision", "Ours (s)", "Authors' (s)", "x authors",
                             "Our RSS before / peak (GiB)", "Authors' RSS before / peak (GiB)",
                             "Peak x authors", "Peak less file pages, ours / authors' (GiB)",
                             "Less file pages x authors"], rows)
    return lines


def section_lines(store):
    lines = []
    alignment = sorted(
        _entries(store, "alignment"), key=lambda e: (e["run"], e["shape"], e["kind"], e["mode"])
    )
    if alignment:
        lines += ["", "### AlignmentLayer vs PyTorch `F.grid_sample` (bilinear, zeros, align_corners=True)", ""]
        lines += _table(
            ["Run (Keras backend)", "Shape (B, H, W, C)", "Pass", "Implementation", "Time (ms)", "x PyTorch"],
            [[e["run"], tuple(e["shape"]), e["kind"], e["mode"], _fmt(e["seconds"] * 1e3, 1),
              _fmt(e.get("ratio_to_pytorch"))] for e in alignment],
        )
    inference = sorted(_entries(store, "inference"), key=lambda e: (e["mode"], e["model"]))
    if inference:
        lines += ["", "### Inference at 512x512, batch 1", ""]
        lines += _table(
            ["Model", "Mode", "Time (s)", "x trunk"],
            [[e["model"], e["mode"], _fmt(e["seconds"], 3), _fmt(e.get("ratio_to_trunk"))] for e in inference],
        )
    training = sorted(_entries(store, "training"), key=lambda e: (e["model"], e["config"]))
    if training:
        lines += ["", "### Training step (`train_on_batch`), minimum over the timed steps", ""]
        lines += _table(
            ["Model", "Size", "Batch", "Configuration", "Step (s)", "First step (s)",
             "RSS before the first step (GiB)", "Peak RSS (GiB)"],
            [[e["model"], "x".join(map(str, e["size"])), e["batch"], e["config"], _fmt(e["seconds"]),
              _fmt(e["first_step_seconds"], 1), _fmt(e["rss_before_mib"] / 1024),
              _fmt(e["peak_rss_mib"] / 1024)] for e in training],
        )
    for entry in _entries(store, "data"):
        lines += ["", "### tf.data training pipeline", ""]
        lines += _table(
            ["Pipeline", "Batches", "Images/s"],
            [[entry["key"], entry["batches"], _fmt(entry["images_per_second"], 1)]],
        )
    sliding = _entries(store, "sliding")
    if sliding:
        lines += ["", "### Sliding-window inference (`predict_sliding`, 1/3 overlap)", ""]
        lines += _table(
            ["Model", "Image", "Tile", "Time per image (s)"],
            [[e["model"], "x".join(map(str, e["size"])), e["tile"], _fmt(e["seconds"], 1)] for e in sliding],
        )
    throughput = _entries(store, "throughput")
    if throughput:
        lines += ["", "### Throughput", ""]
        lines += _table(
            ["Model", "Size", "Pass", "Mode", "Batch", "Images/s"],
            [[e["model"], "x".join(map(str, e["size"])), e.get("kind", "inference"), e["mode"],
              e["batch"], _fmt(e["images_per_second"], 2)]
             for e in sorted(throughput, key=lambda e: e["key"])],
        )
    return lines + authors_lines(store)


def machine_lines(store):
    lines = ["", "### Where and when", ""]
    rows = []
    for section, info in sorted(store["sections"].items()):
        machine = info["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in sorted(machine["versions"].items()))
        gpus = ", ".join(machine["gpus"]) or "none"
        rows.append(
            [section, machine["date"], f"{machine['cpu']}, {machine['cores']} cores, GPU: {gpus}",
             machine["backend"], f"{info['load_before']:.1f} / {info['load_after']:.1f}",
             settings_text(machine.get("settings")), versions]
        )
    return lines + _table(["Section", "Measured", "Machine", "Backend", "Load avg before / after",
                           "Kernel settings", "Versions"], rows)


def settings_text(settings):
    """`timing.kernel_settings` as a table cell: "defaults" where none was set, "not
    recorded" for runs from before the settings were recorded (None)."""
    if settings is None:
        return "not recorded"
    return "; ".join(f"{name}={value}" for name, value in sorted(settings.items())) or "defaults"


def markdown(store):
    return "\n".join(
        [BEGIN, "", "### Targets", ""] + target_rows(store) + section_lines(store) + machine_lines(store) + ["", END]
    )


def write_markdown(store, path):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    # Atomically: the page is mostly hand-written analysis that no run could write again.
    from benchmarks.timing import write_atomic

    write_atomic(path, head + markdown(store) + tail)
