"""A miniature of the paper's ablation (Tables 1-4) on the synthetic street scenes.

    python -m benchmarks.ablation                   # the full run, writes docs/ablation.md
    python -m benchmarks.ablation --quick           # Table 1 only, two seeds
    python -m benchmarks.ablation --jobs 4          # runs in parallel processes
    python -m benchmarks.ablation --report-only     # the tables again from the stored runs

Every variant of the decoder that the paper's Tables 1-4 compare is trained on
the same synthetic training scenes, with the same seeds and the same batches
in the same order (a batch depends only on the seed and the step), and
evaluated on held-out scenes: mIoU, Boundary IoU (Cheng et al., 2021) and the
IoU of the thin classes. Comparisons are paired: for each seed, a variant's
score minus its table's reference variant's score, then mean and spread of
those differences over the seeds. Runs on TensorFlow or JAX (no tf.data: the
batches are NumPy arrays), so the full run can be repeated on a GPU machine.

Each run is stored as one JSON file under `--runs` (so a job can be resumed
and the report rebuilt); the report goes to `--output` (Markdown) with a
picture beside it. Nothing here is tuned to a result: the settings are fixed
before the run and the report shows whatever the runs measured.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.timing import write_atomic

# The decoder variants of the paper's ablation, as AlignSeg arguments.
VARIANTS = {
    "baseline": dict(fusion="bilinear", context=None),
    "align_fa": dict(fusion="align", context=None),
    "align_cm": dict(fusion="bilinear", context="align"),
    "full": dict(fusion="align", context="align"),
    "deconv": dict(fusion="deconv", context="align"),
    "align_fa_high_res": dict(fusion="align", align_fa_offsets="high_res", context="align"),
    "align_fa_low_res": dict(fusion="align", align_fa_offsets="low_res", context="align"),
    "pool_k2": dict(fusion="bilinear", context="pool", context_bins=2),
    "pool_k3": dict(fusion="bilinear", context="pool", context_bins=3),
    "pool_k6": dict(fusion="bilinear", context="pool", context_bins=6),
    "align_cm_k2": dict(fusion="bilinear", context="align", context_bins=2),
    "align_cm_k6": dict(fusion="bilinear", context="align", context_bins=6),
}

# The paper's tables: (title, reference variant, rows of (label, variant, paper mIoU)).
TABLES = (
    (
        "Table 1: modules",
        "baseline",
        (
            ("baseline (bilinear upsampling + sum, no context)", "baseline", 77.1),
            ("+ AlignCM", "align_cm", 79.4),
            ("+ AlignFA", "align_fa", 78.6),
            ("+ AlignFA + AlignCM", "full", 80.5),
        ),
    ),
    (
        "Table 2: aggregation (all with AlignCM)",
        "align_cm",
        (
            ("bilinear upsampling + sum (RGS)", "align_cm", 79.4),
            ("deconvolution upsampling + sum", "deconv", 79.7),
            ("AlignFA", "full", 80.5),
        ),
    ),
    (
        "Table 3: what AlignFA aligns (all with AlignCM)",
        "align_cm",
        (
            ("neither", "align_cm", 79.4),
            ("high-resolution feature A only (Delta_A)", "align_fa_high_res", 79.7),
            ("upsampled low-resolution feature F only (Delta_F)", "align_fa_low_res", None),
            ("both", "full", 80.5),
        ),
    ),
    (
        "Table 4: AlignCM bins K (no AlignFA)",
        "pool_k3",
        (
            ("K=2, without alignment", "pool_k2", 79.1),
            ("K=3, without alignment", "pool_k3", 79.0),
            ("K=6, without alignment", "pool_k6", 78.5),
            ("K=2, with alignment", "align_cm_k2", 79.3),
            ("K=3, with alignment", "align_cm", 79.4),
            ("K=6, with alignment", "align_cm_k6", 79.0),
        ),
    ),
)

# Training and evaluation settings, fixed before the full run. The full run and the
# quick one train alike (the quick one is a subset of the full one's runs: Table 1, two
# seeds), so they share their stored runs. The demo's crops, scales and batch
# (examples/demo.py, which learns poles) at half its steps, to fit 36 runs in about 90
# minutes on 2 cores; one pilot run of the baseline with seed 100 (not an ablation seed)
# checked that poles are learned at this budget (pole IoU 0.35), and nothing else was
# looked at. The budget before (160 steps of 4 crops of 96x96) learned no poles.
TRAINING = dict(
    train_images=400,
    val_images=48,
    image_size=(128, 256),
    crop_size=(128, 128),
    scale_range=(0.75, 1.5),
    batch_size=8,
    steps=200,
    learning_rate=2e-2,
    model=dict(backbone="resnet18", decoder_channels=32, context_hidden_channels=64),
)
SETTINGS = {
    "full": dict(TRAINING, seeds=(0, 1, 2), tables=(0, 1, 2, 3), runs="ablation"),
    "quick": dict(TRAINING, seeds=(0, 1), tables=(0,), runs="ablation"),
    # For the test of this script: seconds per run, results without meaning.
    "tiny": dict(
        seeds=(0, 1),
        tables=(0,),
        variants=("baseline", "full"),
        runs="ablation_tiny",
        train_images=8,
        val_images=4,
        image_size=(64, 128),
        crop_size=(64, 64),
        scale_range=(1.0, 1.25),
        batch_size=2,
        steps=2,
        learning_rate=1e-2,
        model=dict(backbone="resnet18", decoder_channels=8, context_hidden_channels=16),
    ),
}
# The demo's loss (examples/demo.py), for every variant and mode: OHEM cross-entropy
# keeping at least 1/16 of each batch, with sqrt median-frequency class weights from
# the training masks; without them the thin class is not learned at all in a short run.
OHEM_THRESHOLD = 0.7
OHEM_KEPT_FRACTION = 1 / 16
THIN_CLASSES = ("pole",)
VALIDATION_SEED = 10_000  # held-out scenes: another seed of the scene generator


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument("--mode", choices=sorted(SETTINGS), default="full")
    parser.add_argument("--runs", default=None, help="folder of the per-run JSON files")
    parser.add_argument("--output", default=None, help="the report (Markdown)")
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="runs in parallel processes (0: one after the other in this process)",
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", help="instead of the mode's seeds")
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), help="instead of the mode's variants"
    )
    parser.add_argument("--run", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    parser.set_defaults(mode="full")  # --quick and --mode share the destination
    args = parser.parse_args(argv)
    args.settings = dict(SETTINGS[args.mode])
    if args.seeds:
        args.settings["seeds"] = tuple(args.seeds)
    if args.variants:
        args.settings["variants"] = tuple(args.variants)
    args.runs = args.runs or os.path.join("runs", args.settings["runs"])
    # Only the full settings replace the published page; a subset of them, or another
    # mode, writes its report beside its runs.
    published = args.mode == "full" and not args.seeds and not args.variants
    args.output = args.output or (
        os.path.join("docs", "ablation.md") if published
        else os.path.join(args.runs, f"ablation_{args.mode}.md")
    )
    return args


def training_settings(settings):
    """What a run is trained with: the mode's settings less the seeds, tables, variants and
    folder (a run is one variant and seed), as JSON values; stored in each run's file."""
    kept = {k: v for k, v in settings.items() if k not in ("seeds", "tables", "variants", "runs")}
    return json.loads(json.dumps(kept))


def variants_of(settings):
    """The variants the chosen tables need, in the tables' order, each once."""
    if "variants" in settings:
        return list(settings["variants"])
    names = []
    for index in settings["tables"]:
        _, reference, rows = TABLES[index]
        for name in (reference, *(row[1] for row in rows)):
            if name not in names:
                names.append(name)
    return names


# === Data: NumPy batches that depend only on (seed, step) ===


def scenes(settings):
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    train = synthetic_scene_arrays(settings["train_images"], settings["image_size"], seed=0)
    val = synthetic_scene_arrays(settings["val_images"], settings["image_size"], seed=VALIDATION_SEED)
    return train, val


def training_batch(images, masks, settings, seed, step):
    """Random scale (nearest for the mask), padding to the crop (as `data.pad_to_size`:
    bottom and right, the image with the model's mean, the mask with the ignore label),
    crop and horizontal flip, all drawn from (seed, step)."""
    import numpy as np
    from PIL import Image

    from alignseg_keras.backbones.encoders import IMAGENET_RGB
    from alignseg_keras.checks import IGNORE_INDEX

    rng = np.random.default_rng([seed, step])
    crop_h, crop_w = settings["crop_size"]
    batch_images, batch_masks = [], []
    for index in rng.integers(0, len(images), settings["batch_size"]):
        scale = rng.uniform(*settings["scale_range"])
        height, width = masks[index].shape
        resized = (round(width * scale), round(height * scale))
        image = np.asarray(Image.fromarray(images[index]).resize(resized, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(masks[index]).resize(resized, Image.NEAREST))
        size = (max(crop_w, resized[0]), max(crop_h, resized[1]))
        padded_image = np.empty((size[1], size[0], 3), np.float32)
        padded_image[...] = IMAGENET_RGB["mean"]
        padded_image[: resized[1], : resized[0]] = image
        padded_mask = np.full((size[1], size[0]), IGNORE_INDEX, mask.dtype)
        padded_mask[: resized[1], : resized[0]] = mask
        image, mask = padded_image, padded_mask
        top = rng.integers(0, size[1] - crop_h + 1)
        left = rng.integers(0, size[0] - crop_w + 1)
        image, mask = image[top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]
        if rng.uniform() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        batch_images.append(image)
        batch_masks.append(mask)
    return np.stack(batch_images).astype("float32"), np.stack(batch_masks).astype("int32")


def batch_sequence(images, masks, settings, seed):
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return settings["steps"]

        def __getitem__(self, step):
            return training_batch(images, masks, settings, seed, step)

    return Batches()


# === One run ===


def training_loss(masks, settings):
    from alignseg_keras.losses import OhemCrossEntropy
    from alignseg_keras.losses import median_frequency_weights
    from alignseg_keras.synthetic_scenes import SYNTHETIC_CLASSES

    crop_h, crop_w = settings["crop_size"]
    return OhemCrossEntropy(
        threshold=OHEM_THRESHOLD,
        min_kept=int(settings["batch_size"] * crop_h * crop_w * OHEM_KEPT_FRACTION),
        class_weights=median_frequency_weights(masks, len(SYNTHETIC_CLASSES)),
    )


def train_and_evaluate(variant, seed, settings):
    import keras
    import numpy as np

    from alignseg_keras import AlignSeg
    from alignseg_keras.metrics import BoundaryIoU
    from alignseg_keras.metrics import MeanIoU
    from alignseg_keras.synthetic_scenes import SYNTHETIC_CLASSES

    (train_images, train_masks), (val_images, val_masks) = scenes(settings)
    keras.utils.set_random_seed(seed)
    model = AlignSeg(len(SYNTHETIC_CLASSES), **settings["model"], **VARIANTS[variant])
    model.compile(
        loss=training_loss(train_masks, settings),
        learning_rate=settings["learning_rate"],
        total_steps=settings["steps"],
        warmup_steps=settings["steps"] // 20,
    )
    start = time.perf_counter()
    # shuffle=False: Keras shuffles a PyDataset's batch indices with Python's `random`,
    # whose state then depends on how many initialisers the variant built, so variants
    # of one seed read their batches in different orders (the run of 2026-12-02 did).
    model.fit(batch_sequence(train_images, train_masks, settings, seed), epochs=1, verbose=0,
              shuffle=False)
    train_seconds = time.perf_counter() - start
    predictions = model.predict(val_images.astype("float32"), batch_size=8, verbose=0)
    if isinstance(predictions, dict):
        predictions = predictions["logits"]
    labels = np.argmax(predictions, axis=-1)
    iou, boundary = MeanIoU(len(SYNTHETIC_CLASSES)), BoundaryIoU(len(SYNTHETIC_CLASSES))
    iou.update_state(val_masks, labels)
    boundary.update_state(val_masks, labels)
    per_class = [float(x) for x in iou.per_class_iou()]
    per_class_boundary = [float(x) for x in boundary.per_class_iou()]
    thin = [SYNTHETIC_CLASSES.index(name) for name in THIN_CLASSES]
    return {
        "variant": variant,
        "seed": seed,
        "miou": float(np.nanmean(per_class)),
        "boundary_iou": float(np.nanmean(per_class_boundary)),
        "thin_iou": float(np.nanmean([per_class[i] for i in thin])),
        "per_class_iou": dict(zip(SYNTHETIC_CLASSES, per_class)),
        "per_class_boundary_iou": dict(zip(SYNTHETIC_CLASSES, per_class_boundary)),
        "parameters": int(model.count_params()),
        "train_seconds": train_seconds,
        "backend": keras.backend.backend(),
    }


def run_path(args, variant, seed):
    return os.path.join(args.runs, f"{variant}_seed{seed}.json")


def run_one(args, variant, seed):
    from benchmarks.timing import code_version
    from benchmarks.timing import cpu_model
    from benchmarks.timing import gpu_names

    result = train_and_evaluate(variant, int(seed), args.settings)
    gpus = gpu_names()
    result.update(
        mode=args.mode,
        settings=training_settings(args.settings),
        machine=f"{cpu_model()}, {os.cpu_count()} cores, GPU: {', '.join(gpus) or 'none'}",
        date=time.strftime("%Y-%m-%d"),
        code=code_version(),
    )
    os.makedirs(args.runs, exist_ok=True)
    write_atomic(run_path(args, variant, seed), json.dumps(result, indent=1).encode())
    print(json.dumps({k: result[k] for k in ("variant", "seed", "miou", "boundary_iou", "thin_iou")}))


def run_all(args):
    """Every (variant, seed) not yet stored, each in a fresh process, `--jobs` at a time."""
    settings = args.settings
    os.makedirs(args.runs, exist_ok=True)
    pending = [
        (variant, seed)
        for seed in settings["seeds"]
        for variant in variants_of(settings)
        if not os.path.exists(run_path(args, variant, seed))
    ]
    if args.jobs == 0:
        for variant, seed in pending:
            run_one(args, variant, seed)
        return
    running = []
    failures = []
    while pending or running:
        while pending and len(running) < args.jobs:
            variant, seed = pending.pop(0)
            command = [sys.executable, "-m", "benchmarks.ablation", "--mode", args.mode,
                       "--runs", args.runs, "--run", variant, str(seed)]
            running.append(((variant, seed), subprocess.Popen(command)))
        time.sleep(0.5)
        for item in list(running):
            (variant, seed), process = item
            if process.poll() is not None:
                running.remove(item)
                if process.returncode != 0:
                    failures.append(f"{variant} seed {seed} (exit {process.returncode})")
    if failures:
        raise SystemExit("Ablation runs failed: " + ", ".join(failures))


# === Report ===

METRICS = (("miou", "mIoU"), ("boundary_iou", "Boundary IoU"), ("thin_iou", "pole IoU"))


def load_runs(args):
    """The stored runs of the chosen variants and seeds, by `(variant, seed)`. A run that
    records other training settings than the chosen mode's is left out, with a word on
    stdout (it would mix other training into the tables); runs from before the settings
    were recorded are taken as they are."""
    runs = {}
    settings = args.settings
    current = training_settings(settings)
    for variant in variants_of(settings):
        for seed in settings["seeds"]:
            path = run_path(args, variant, seed)
            if os.path.exists(path):
                with open(path) as handle:
                    run = json.load(handle)
                if run.get("settings", current) != current:
                    print(f"Left out {path}: trained with other settings ({_changed(run['settings'], current)}); "
                          "delete it to run it again with these, or use another --runs folder.")
                    continue
                runs[(variant, seed)] = run
    return runs


def _changed(recorded, current):
    """The settings of `recorded` that differ from `current` (both `training_settings`)."""
    names = sorted(name for name in set(recorded) | set(current)
                   if recorded.get(name) != current.get(name))
    return ", ".join(f"{name} {recorded.get(name)} against {current.get(name)}" for name in names)


def mean_std(values):
    """Mean and sample standard deviation (n - 1); the deviation is NaN for one value."""
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), spread


def cell(mean, spread, scale=100.0, signed=False):
    if mean != mean:
        return "n/a"
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.1f}"
    return text if spread != spread else f"{text} ± {spread * scale:.1f}"


def variant_scores(runs, variant, metric, seeds):
    return [runs[(variant, s)][metric] for s in seeds if (variant, s) in runs]


def paired_differences(runs, variant, reference, metric, seeds):
    """Per seed, the variant's score minus the reference's (same data, same seed); seeds
    where either score is NaN (a class absent from the run's predictions and labels) are
    left out, so that every count and interval is of the seeds compared."""
    differences = (runs[(variant, s)][metric] - runs[(reference, s)][metric]
                   for s in seeds if (variant, s) in runs and (reference, s) in runs)
    return [d for d in differences if d == d]


# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1 for n seeds), to 30
# (scipy.stats.t.ppf(0.975, df) to three decimals; a test compares them where scipy is).
T_QUANTILES_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
                  8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145,
                  15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080,
                  22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
                  29: 2.045, 30: 2.042}


def t_quantile_95(degrees_of_freedom):
    """The two-sided 95% quantile of Student's t: the table to 30 degrees of freedom, then
    the normal quantile with the first two terms of its expansion in 1/df (Cornish-Fisher),
    within 1e-4 from 31 on."""
    if degrees_of_freedom in T_QUANTILES_95:
        return T_QUANTILES_95[degrees_of_freedom]
    z, df = 1.959964, degrees_of_freedom
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_interval(differences):
    """The 95% confidence interval of the mean paired difference (Student's t, n - 1
    degrees of freedom), or None for fewer than two seeds."""
    mean, spread = mean_std(differences)
    if len(differences) < 2 or spread != spread:
        return None
    quantile = t_quantile_95(len(differences) - 1)
    half = quantile * spread / len(differences) ** 0.5
    return mean - half, mean + half


def paired_cell(differences):
    """Mean ± std of paired differences, x100, their 95% interval, and on how many seeds
    the variant is higher."""
    text = cell(*mean_std(differences), signed=True)
    if text == "n/a":
        return text
    interval = paired_interval(differences)
    if interval is not None:
        text += f" [{interval[0] * 100:+.1f}, {interval[1] * 100:+.1f}]"
    higher = sum(1 for d in differences if d > 0)
    return f"{text} ({higher}/{len(differences)} higher)"


def table_markdown(runs, table, seeds):
    title, reference, rows = table
    if not any(variant_scores(runs, variant, "miou", seeds) for _, variant, _ in rows):
        return f"### {title}\n\nNot run yet."
    header = "| variant | paper mIoU | " + " | ".join(
        f"{label} | Δ {label}" for _, label in METRICS
    ) + " |"
    lines = [f"### {title}", "", f"Δ: paired difference to *{reference}*, mean ± std over seeds "
             "[95% confidence interval of the mean].", "",
             header, "|" + "---|" * (2 + 2 * len(METRICS))]
    for label, variant, paper in rows:
        if not variant_scores(runs, variant, "miou", seeds):
            continue
        cells = [label, "–" if paper is None else f"{paper:.1f}"]
        for metric, _ in METRICS:
            cells.append(cell(*mean_std(variant_scores(runs, variant, metric, seeds))))
            if variant == reference:
                cells.append("(reference)")
            else:
                cells.append(paired_cell(paired_differences(runs, variant, reference, metric, seeds)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs, settings, path):
    """One panel per metric: each variant's seeds as dots, mean ± std as a bar."""
    from PIL import Image
    from PIL import ImageDraw

    variants = variants_of(settings)
    seeds = settings["seeds"]
    panel_w, row_h, left, top = 360, 22, 150, 40
    width = left + panel_w * len(METRICS) + 20
    height = top + row_h * len(variants) + 40
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    for index, name in enumerate(variants):
        draw.text((8, top + index * row_h + 4), name, fill="black")
    for panel, (metric, label) in enumerate(METRICS):
        x0 = left + panel * panel_w
        values = [runs[(v, s)][metric] for v in variants for s in seeds if (v, s) in runs]
        values = [v for v in values if v == v] or [0.0, 1.0]
        low, high = min(values), max(values)
        margin = max(0.01, 0.1 * (high - low))
        low, high = low - margin, high + margin

        def x(value):
            return x0 + 10 + (panel_w - 30) * (value - low) / (high - low)

        draw.text((x0 + 10, 8), f"{label} (x100)", fill="black")
        draw.rectangle([x0 + 10, top - 6, x0 + panel_w - 20, top + row_h * len(variants)], outline="gray")
        for tick in (low + margin, high - margin):
            draw.text((x(tick) - 12, top + row_h * len(variants) + 6), f"{tick * 100:.1f}", fill="gray")
        for index, name in enumerate(variants):
            y = top + index * row_h + row_h // 2
            scores = variant_scores(runs, name, metric, seeds)
            mean, spread = mean_std(scores)
            if mean != mean:
                continue
            if spread == spread:
                draw.line([x(mean - spread), y, x(mean + spread), y], fill=(70, 110, 200), width=3)
            for score in scores:
                draw.ellipse([x(score) - 2, y - 6, x(score) + 2, y - 2], fill=(120, 120, 120))
            draw.rectangle([x(mean) - 2, y - 4, x(mean) + 2, y + 4], fill=(200, 40, 40))
    buffer = __import__("io").BytesIO()
    picture.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def picture_path(args):
    """The report's picture: beside it, or in full mode under images/ beside it (as
    docs/ablation.md shows docs/images/ablation.png); named after the report, so that
    rebuilding another run's report keeps the published picture."""
    stem, _ = os.path.splitext(args.output)
    if args.mode != "full":
        return stem + ".png"
    return os.path.join(os.path.dirname(args.output), "images", os.path.basename(stem) + ".png")


def report(args):
    settings = args.settings
    runs = load_runs(args)
    if not runs:
        raise SystemExit(f"No runs stored under {args.runs}; run without --report-only first.")
    picture = picture_path(args)
    os.makedirs(os.path.dirname(picture) or ".", exist_ok=True)
    plot(runs, settings, picture)
    machines = sorted({run.get("machine", "unknown") for run in runs.values()})
    backends = sorted({run.get("backend", "unknown") for run in runs.values()})
    dates = sorted({run.get("date", "unknown") for run in runs.values()})
    code = sorted({run.get("code") or "not recorded" for run in runs.values()})
    expected = len(variants_of(settings)) * len(settings["seeds"])
    train_minutes = sum(run["train_seconds"] for run in runs.values()) / 60
    sections = [table_markdown(runs, TABLES[i], settings["seeds"]) for i in settings["tables"]]
    generated = "\n".join([
        f"<!-- BEGIN GENERATED: python -m benchmarks.ablation --mode {args.mode} -->",
        "",
        f"- Mode `{args.mode}`: {len(runs)} of {expected} runs, seeds {list(settings['seeds'])}; "
        f"machine: {'; '.join(machines)}; backend: {', '.join(backends)}; date: {', '.join(dates)}; "
        f"code: {', '.join(code)}; training time {train_minutes:.0f} min in all.",
        f"- Settings: `{json.dumps(training_settings(settings))}`; "
        f"loss: OHEM cross-entropy (threshold {OHEM_THRESHOLD}, at least {OHEM_KEPT_FRACTION:.4g} of each "
        "batch kept) with sqrt median-frequency class weights, as the demo.",
        "",
        *[part + "\n" for part in sections],
        f"![mIoU, Boundary IoU and pole IoU of every variant]({os.path.relpath(picture, os.path.dirname(args.output) or '.')})",
        "",
        "<!-- END GENERATED -->",
    ])
    write_atomic(args.output, merged_report(args.output, generated).encode())
    print(f"Wrote {args.output} and {picture}")


def merged_report(path, generated):
    """`generated` in place of the generated block of `path`, keeping the text around it."""
    if not os.path.exists(path):
        return "# Ablation in miniature\n\n" + generated + "\n"
    with open(path) as handle:
        text = handle.read()
    begin = text.find("<!-- BEGIN GENERATED")
    end = text.find("<!-- END GENERATED -->")
    if begin < 0 or end < 0:
        return text.rstrip("\n") + "\n\n" + generated + "\n"
    return text[:begin] + generated + text[end + len("<!-- END GENERATED -->"):]


def main(argv=None):
    args = parse(argv)
    from benchmarks import backends

    backends.select_backend()
    if args.run:
        run_one(args, *args.run)
        return
    if not args.report_only:
        run_all(args)
    report(args)


if __name__ == "__main__":
    main()
