"""int8 post-training quantisation of the demo model (ONNX Runtime): accuracy and speed.

    python -m benchmarks.int8                        # writes benchmarks/results/int8.json
    python -m benchmarks.int8 --demo-model runs/demo/model.keras --repeats 5
    python -m benchmarks.int8 --official             # writes benchmarks/results/int8_official.json

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

With `--official`, the official preset (AlignSeg-R101, the network that
`benchmarks.authors` times beside the authors') instead, at 512x512: its
weights random, its normalisations and biases randomised as after training
(`randomize_statistics`), calibrated on 4 random images. Only speed means
something there: the time of the Keras model as `benchmarks.authors` runs it
(float32, and the bfloat16 `inference_model`), of ONNX float32 and int8,
round-robin in one run, and where the int8 model's time goes (ONNX Runtime's
profile of one call, kernel time by operator type). The fraction of labels
equal to Keras float32 on the timed image is recorded, but random weights say
little about accuracy.
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
OFFICIAL_SIZE = (512, 512)
OFFICIAL_CALIBRATION_IMAGES = 4


def onnx_files(model, folder, calibration, name="demo"):
    """`{"onnx float32": path, "onnx int8": path}`: `model` exported and quantised."""
    from alignseg_keras.export import export_model
    from alignseg_keras.quantize import quantize_onnx_int8

    float_path = os.path.join(folder, f"{name}.onnx")
    export_model(model, float_path, format="onnx")
    int8_path = quantize_onnx_int8(float_path, os.path.join(folder, f"{name}_int8.onnx"), calibration)
    return {"onnx float32": float_path, "onnx int8": int8_path}


def onnx_session(path, profile_prefix=None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_sessions(model, folder):
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    calibration, _ = synthetic_scene_arrays(**CALIBRATION_SCENES)
    paths = onnx_files(model, folder, calibration)
    sessions = {name: onnx_session(path) for name, path in paths.items()}
    return sessions, {name: os.path.getsize(path) for name, path in paths.items()}


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


def onnx_operator_times(path, image, calls=3):
    """`{operator type: milliseconds}` of the last of `calls` runs of the ONNX model at
    `path` on `image`, from ONNX Runtime's profile (kernel time summed by operator
    type, largest first), with the whole run's time under `"model run"`."""
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(path, profile_prefix=os.path.join(folder, "profile"))
        for _ in range(calls):
            run_session(session, image)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    last_run = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-1]
    times = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= last_run["ts"]:
            operator = event["args"]["op_name"]
            times[operator] = times.get(operator, 0.0) + event["dur"] / 1e3
    ranked = dict(sorted(times.items(), key=lambda item: -item[1]))
    return {"model run": last_run["dur"] / 1e3, **ranked}


def official(repeats):
    """The official preset at `OFFICIAL_SIZE`: Keras and ONNX float32 and int8, timed."""
    from alignseg_keras import AlignSeg
    from alignseg_keras.models.presets import OFFICIAL_PRESETS
    from alignseg_keras.testing import randomize_statistics
    from benchmarks import authors

    model = AlignSeg.from_preset(OFFICIAL_PRESETS[101], num_classes=authors.NUM_CLASSES)
    randomize_statistics(model, biases=True)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 255, (OFFICIAL_CALIBRATION_IMAGES, *OFFICIAL_SIZE, 3)).astype("float32")
    image = rng.uniform(0, 255, (1, *OFFICIAL_SIZE, 3)).astype("float32")
    keras_forward = {
        f"keras {precision}": authors.keras_inference(model, precision, fold_batch_norm=None, frozen=False)
        for precision in ("float32", "bfloat16")
    }
    with tempfile.TemporaryDirectory() as folder:
        paths = onnx_files(model, folder, calibration, name="official")
        sessions = {name: onnx_session(path) for name, path in paths.items()}
        inputs = backends.device_array(image)
        labels = {name: np.asarray(forward(inputs)).argmax(-1) for name, forward in keras_forward.items()}
        labels.update({name: run_session(session, image).argmax(-1) for name, session in sessions.items()})
        candidates = {name: (lambda f=forward: backends.block(f(inputs))) for name, forward in keras_forward.items()}
        candidates.update({name: (lambda s=session: run_session(s, image)) for name, session in sessions.items()})
        seconds = interleaved_minimum(candidates, repeats)
        return {
            "model": "alignseg_resnet101_official, random weights, randomize_statistics(biases=True)",
            "size": list(OFFICIAL_SIZE),
            "calibration_images": OFFICIAL_CALIBRATION_IMAGES,
            "file_bytes": {name: os.path.getsize(path) for name, path in paths.items()},
            "seconds": seconds,
            "int8_time_over_keras_bfloat16": seconds["onnx int8"] / seconds["keras bfloat16"],
            "labels_equal_to_keras_float32": {
                name: float((value == labels["keras float32"]).mean()) for name, value in labels.items()
            },
            "onnx_int8_operator_milliseconds": onnx_operator_times(paths["onnx int8"], image),
        }


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-model", default=DEMO_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--official", action="store_true",
                        help=f"time the official preset at {OFFICIAL_SIZE[0]}x{OFFICIAL_SIZE[1]} instead of the demo model")
    parser.add_argument("--output", default=None,
                        help="JSON to write (default benchmarks/results/int8.json, int8_official.json with --official)")
    args = parser.parse_args(argv)
    if args.output is None:
        name = "int8_official.json" if args.official else "int8.json"
        args.output = os.path.join(ROOT, "benchmarks", "results", name)
    return args


def write_result(result, output):
    from benchmarks.timing import write_atomic

    result = measured(result)
    print(json.dumps(result, indent=1), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_atomic(output, json.dumps(result, indent=2))
    print(f"wrote {output}")


def main(argv=None):
    import keras
    import onnxruntime

    args = parse(argv)
    if args.official:
        write_result({"onnxruntime": onnxruntime.__version__, **official(args.repeats)}, args.output)
        return
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
    write_result(result, args.output)


if __name__ == "__main__":
    main()
