"""float32 against bfloat16 inference: accuracy cost and speed, side by side in one run.

    python -m benchmarks.precision                       # writes benchmarks/results/precision.json
    python -m benchmarks.precision --output /tmp/p.json --repeats 3 --images 2
    python -m benchmarks.precision --sections timing   # re-measure one section, keep the others

Three measurements, each with the model in float32 and its `inference_model(model,
"bfloat16")` copy, which the inference functions and `--precision bfloat16` run
(Keras' `mixed_bfloat16`: the same float32 weights, bfloat16 arithmetic, float32
logits; BatchNormalization folded into the convolutions):

- demo: the model `make demo` trains (`runs/demo/model.keras`) on its held-out
  synthetic scenes (`synthetic_scene_arrays(48, (128, 256), seed=1)`, the
  demo's validation split), predicted whole: the fraction of pixels whose
  argmax agrees, and mIoU and Boundary IoU in each precision.
- official: the authors' architecture (`alignseg_resnet101_official`, 19
  classes, random weights) on random 512x512 images: argmax agreement and the
  largest |logit difference| relative to the logit scale (the standard
  deviation and the largest |value| of the float32 logits).
- timing: `predict_on_batch` of the official model at 512x512, batch 1, both
  precisions run round-robin (`interleaved_minimum`), the load average before
  and after.

TensorFlow backend unless KERAS_BACKEND says otherwise. bfloat16 is fast only
on CPUs with AMX or AVX512-BF16 (the JSON records the CPU flags found).
"""

import argparse
import json
import os

import numpy as np

from benchmarks import backends

BACKEND = backends.select_backend()

from benchmarks.timing import interleaved_minimum  # noqa: E402
from benchmarks.timing import load_average  # noqa: E402
from benchmarks.timing import machine_info  # noqa: E402
from benchmarks.timing import write_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(ROOT, "runs", "demo", "model.keras")
DEMO_SCENES = dict(num_images=48, image_size=(128, 256), seed=1)
OFFICIAL_PRESET = "alignseg_resnet101_official"
NUM_CLASSES = 19


def bf16_cpu_flags():
    """The CPU's bfloat16 features (`hardware.BFLOAT16_CPU_FEATURES`) found in /proc/cpuinfo."""
    from alignseg_keras.hardware import BFLOAT16_CPU_FEATURES
    from alignseg_keras.hardware import cpu_flags

    return sorted(set(BFLOAT16_CPU_FEATURES).intersection(cpu_flags() or ()))


def segmentation_scores(labels, predictions, num_classes):
    from alignseg_keras.metrics import BoundaryIoU
    from alignseg_keras.metrics import MeanIoU

    miou, boundary = MeanIoU(num_classes), BoundaryIoU(num_classes)
    for start in range(0, len(labels), 8):
        miou.update_state(labels[start : start + 8], predictions[start : start + 8])
        boundary.update_state(labels[start : start + 8], predictions[start : start + 8])
    return {"miou": float(miou.result()), "boundary_iou": float(boundary.result())}


def demo(path=DEMO_MODEL):
    """Agreement and scores of the demo's model on its held-out scenes, both precisions."""
    import keras

    from alignseg_keras.inference import inference_model
    from alignseg_keras.inference import predict_whole
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    model = keras.saving.load_model(path)
    models = {"float32": model, "bfloat16": inference_model(model, "bfloat16")}
    images, masks = synthetic_scene_arrays(**DEMO_SCENES)
    probabilities = {name: predict_whole(m, images) for name, m in models.items()}
    labels = {name: p.argmax(-1) for name, p in probabilities.items()}
    return {
        "section": "demo",
        "model": os.path.relpath(path, ROOT),
        "scenes": {**DEMO_SCENES, "image_size": list(DEMO_SCENES["image_size"])},
        "argmax_agreement": float((labels["float32"] == labels["bfloat16"]).mean()),
        "max_probability_difference": float(
            np.abs(probabilities["float32"] - probabilities["bfloat16"]).max()
        ),
        "scores": {
            name: segmentation_scores(masks, labels[name], model.num_classes)
            for name in models
        },
    }


def official_models(seed):
    import keras

    from alignseg_keras import AlignSeg
    from alignseg_keras.inference import inference_model

    keras.utils.set_random_seed(seed)
    model = AlignSeg.from_preset(OFFICIAL_PRESET, num_classes=NUM_CLASSES)
    return {"float32": model, "bfloat16": inference_model(model, "bfloat16")}


def random_images(count, size, seed):
    return np.random.default_rng(seed).uniform(0, 255, (count, *size, 3)).astype("float32")


def official(models, count, size=(512, 512), seed=0):
    """Argmax agreement and logit differences of the official architecture, random weights."""
    images = random_images(count, size, seed)
    logits = {
        name: np.concatenate(
            [np.asarray(m.predict_on_batch(images[i : i + 1]), "float32") for i in range(count)]
        )
        for name, m in models.items()
    }
    reference, other = logits["float32"], logits["bfloat16"]
    difference = np.abs(reference - other)
    return {
        "section": "official",
        "preset": OFFICIAL_PRESET,
        "weights": f"random (keras.utils.set_random_seed({seed}))",
        "images": count,
        "size": list(size),
        "argmax_agreement": float((reference.argmax(-1) == other.argmax(-1)).mean()),
        "max_abs_logit_difference": float(difference.max()),
        "mean_abs_logit_difference": float(difference.mean()),
        "float32_logit_std": float(reference.std()),
        "float32_logit_max_abs": float(np.abs(reference).max()),
        "max_difference_over_std": float(difference.max() / reference.std()),
        "max_difference_over_max_abs": float(difference.max() / np.abs(reference).max()),
    }


def timing(models, repeats, size=(512, 512)):
    """predict_on_batch at `size`, batch 1, float32 and bfloat16 round-robin."""
    image = random_images(1, size, seed=1)
    candidates = {name: (lambda m=m: m.predict_on_batch(image)) for name, m in models.items()}
    before = load_average()
    best = interleaved_minimum(candidates, repeats)
    return {
        "section": "timing",
        "preset": OFFICIAL_PRESET,
        "size": list(size),
        "batch": 1,
        "call": "model.predict_on_batch",
        "repeats": repeats,
        "seconds": best,
        "speedup": best["float32"] / best["bfloat16"],
        "load_average_before_after": [before, load_average()],
    }


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results",
                                                         "precision.json"))
    parser.add_argument("--demo-model", default=DEMO_MODEL)
    parser.add_argument("--images", type=int, default=3,
                        help="512x512 images for the official model's agreement (default 3)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds (default 5)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}; the others "
                        "are kept from --output when it exists (default: all)")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return args


SECTIONS = ("demo", "official", "timing")


def measured(entry):
    """`entry` with the machine, date and load average (at its end) it was measured with."""
    machine = machine_info(BACKEND)
    machine["cpu_bf16_flags"] = bf16_cpu_flags()
    machine["load_average_end"] = load_average()
    return {**entry, "machine": machine}


def main(argv=None):
    args = parse(argv)
    results = {}  # the sections not measured now are kept as they were
    if os.path.exists(args.output):
        with open(args.output) as handle:
            results = {key: value for key, value in json.load(handle).items() if key in SECTIONS}
    if "demo" in args.sections:
        if os.path.exists(args.demo_model):
            results["demo"] = measured(demo(args.demo_model))
            print(json.dumps(results["demo"]), flush=True)
        else:
            kept = (f"; {args.output} keeps its demo figures of {results['demo']['machine']['date']}"
                    if "demo" in results else "")
            print(f"{args.demo_model} not found (run `make demo`); the demo section is not "
                  f"measured{kept}.")
    if {"official", "timing"} & set(args.sections):
        models = official_models(seed=0)
        if "official" in args.sections:
            results["official"] = measured(official(models, args.images))
            print(json.dumps(results["official"]), flush=True)
        if "timing" in args.sections:
            results["timing"] = measured(timing(models, args.repeats))
            print(json.dumps(results["timing"]), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_atomic(args.output, json.dumps(results, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
