"""int8 post-training quantisation of the demo model (ONNX Runtime): accuracy and speed.

    python -m benchmarks.int8                        # writes benchmarks/results/int8.json
    python -m benchmarks.int8 --demo-model runs/demo/model.keras --repeats 5

The model `make demo` trains (`runs/demo/model.keras`) is exported to ONNX
(`export_model(..., format="onnx")`) and quantised with
`alignseg_keras.quantize.quantize_onnx_int8`, calibrated on 32 of the demo's
training scenes (`synthetic_scene_arrays(400, (128, 256), seed=0)`, the first
32). On the demo's held-out scenes (`synthetic_scene_arrays(48, (128, 256),
seed=1)`): mIoU and Boundary IoU of the Keras model, of the float32 ONNX model
and of the int8 one, and the fraction of pixels whose label agrees with the
Keras model. Timing, round-robin in one run (`interleaved_minimum`), batch 1,
at the demo's 128x256 and at 512x1024: the Keras model (`predict_on_batch`,
float32 and bfloat16) and ONNX Runtime's CPU provider, float32 and int8, each
with the process's default threads.
"""

import argparse
import json
import os
import tempfile

import numpy as np

from benchmarks import backends

BACKEND = backends.select_backend()

from benchmarks.precision import DEMO_MODEL  # noqa: E402
from benchmarks.precision import DEMO_SCENES  # noqa: E402
from benchmarks.precision import measured  # noqa: E402
from benchmarks.precision import segmentation_scores  # noqa: E402
from benchmarks.timing import interleaved_minimum  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIBRATION_SCENES = dict(num_images=32, image_size=(128, 256), seed=0)
TIMING_SIZES = ((128, 256), (512, 1024))


def onnx_sessions(model, folder):
    import onnxruntime

    from alignseg_keras.export import export_model
    from alignseg_keras.quantize import quantize_onnx_int8
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    float_path = os.path.join(folder, "demo.onnx")
    export_model(model, float_path, format="onnx")
    calibration, _ = synthetic_scene_arrays(**CALIBRATION_SCENES)
    int8_path = quantize_onnx_int8(float_path, os.path.join(folder, "demo_int8.onnx"), calibration)
    sessions = {}
    for name, path in (("onnx float32", float_path), ("onnx int8", int8_path)):
        sessions[name] = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    sizes = {name: os.path.getsize(path) for name, path in (("onnx float32", float_path), ("onnx int8", int8_path))}
    return sessions, sizes


def run_session(session, images):
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 1]})[0] for i in range(len(images))])


def accuracy(model, sessions):
    from alignseg_keras.inference import predict_whole
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    images, masks = synthetic_scene_arrays(**DEMO_SCENES)
    labels = {"keras float32": predict_whole(model, images).argmax(-1)}
    for name, session in sessions.items():
        labels[name] = run_session(session, images.astype("float32")).argmax(-1)
    return {
        "scenes": {**DEMO_SCENES, "image_size": list(DEMO_SCENES["image_size"])},
        "calibration": {**CALIBRATION_SCENES, "image_size": list(CALIBRATION_SCENES["image_size"])},
        "scores": {name: segmentation_scores(masks, value, model.num_classes) for name, value in labels.items()},
        "agreement_with_keras_float32": {
            name: float((value == labels["keras float32"]).mean()) for name, value in labels.items()
        },
    }


def timing(model, sessions, repeats):
    from alignseg_keras.inference import as_precision

    bfloat16 = as_precision(model, "bfloat16")
    results = {}
    for size in TIMING_SIZES:
        image = np.random.default_rng(1).uniform(0, 255, (1, *size, 3)).astype("float32")
        candidates = {
            "keras float32": lambda: model.predict_on_batch(image),
            "keras bfloat16": lambda: bfloat16.predict_on_batch(image),
        }
        for name, session in sessions.items():
            candidates[name] = lambda s=session: run_session(s, image)
        best = interleaved_minimum(candidates, repeats)
        results["x".join(map(str, size))] = {
            "seconds": best,
            "int8_speedup_over_onnx_float32": best["onnx float32"] / best["onnx int8"],
            "int8_speedup_over_keras_float32": best["keras float32"] / best["onnx int8"],
        }
    return results


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-model", default=DEMO_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "int8.json"))
    return parser.parse_args(argv)


def main(argv=None):
    import keras
    import onnxruntime

    from alignseg_keras.atomic import atomic_path

    args = parse(argv)
    if not os.path.exists(args.demo_model):
        raise SystemExit(f"{args.demo_model} not found: run `make demo` first.")
    model = keras.saving.load_model(args.demo_model)
    with tempfile.TemporaryDirectory() as folder:
        sessions, sizes = onnx_sessions(model, folder)
        result = {
            "model": os.path.relpath(args.demo_model, ROOT),
            "onnxruntime": onnxruntime.__version__,
            "file_bytes": sizes,
            "accuracy": accuracy(model, sessions),
            "timing": timing(model, sessions, args.repeats),
        }
    result = measured(result)
    print(json.dumps(result, indent=1), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with atomic_path(args.output) as temporary:
        with open(temporary, "w") as handle:
            json.dump(result, handle, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
