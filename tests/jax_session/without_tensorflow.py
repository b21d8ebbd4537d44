"""AlignSeg on JAX or torch in a Python where TensorFlow cannot be imported.

    KERAS_BACKEND=jax python tests/jax_session/without_tensorflow.py   # or torch

Blocks every `tensorflow` import, then builds a tiny model, trains it two
steps with the default `compile()` (mean IoU included), saves and reloads
it; runs the inference modes (whole, sliding window, multi-scale + flip), the
pictures of `visualize` (overlays, offset fields, captions), the synthetic
scenes, the metrics, and `alignseg predict` on PNG files; prints "ok". Only
`alignseg_keras.data` (tf.data) and `alignseg_keras.export` (SavedModel) need
TensorFlow.
"""

import sys
import tempfile

# As if TensorFlow were not installed: `import tensorflow` (and of any of its
# modules) raises ModuleNotFoundError, and `importlib.util.find_spec` finds
# nothing (torch._dynamo asks it whether TensorFlow is there).
sys.modules["tensorflow"] = None

import os  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import cases  # noqa: E402


def check_inference_and_pictures(model, images):
    from alignseg_keras import inference
    from alignseg_keras import visualize
    from alignseg_keras.metrics import BoundaryIoU
    from alignseg_keras.metrics import MeanIoU
    from alignseg_keras.synthetic_scenes import synthetic_scene_arrays

    whole = inference.predict_whole(model, images)
    assert whole.shape == images.shape[:3] + (cases.NUM_CLASSES,)
    np.testing.assert_allclose(whole.sum(-1), 1.0, atol=1e-5)
    sliding = inference.predict_sliding(model, images, tile_size=(48, 48))
    multiscale = inference.predict_multiscale(model, images, scales=(0.75, 1.0), flip=True)
    for probabilities in (sliding, multiscale):
        assert probabilities.shape == whole.shape and np.isfinite(probabilities).all()
    labels = whole.argmax(-1)
    uint8_image = np.clip(images[0], 0, 255).astype("uint8")
    palette = visualize.get_palette("auto", cases.NUM_CLASSES)
    overlay = visualize.overlay(uint8_image, labels[0], palette)
    offsets = visualize.offset_images(model, uint8_image)
    assert overlay.shape == uint8_image.shape and offsets
    captioned = visualize.titled(overlay, "prediction")
    assert captioned.shape[0] > overlay.shape[0]
    scene_images, scene_masks = synthetic_scene_arrays(2, (64, 96), seed=0)
    for metric in (MeanIoU(8), BoundaryIoU(8)):
        metric.update_state(scene_masks, scene_masks)
        assert float(metric.result()) == 1.0
    assert scene_images.dtype == np.uint8


def check_predict_command(model_path, folder):
    from alignseg_keras.cli import main as alignseg

    rng = np.random.default_rng(0)
    files = []
    for index in range(2):
        files.append(os.path.join(folder, f"street{index}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(files[-1])
    output = os.path.join(folder, "predictions")
    command = ["predict", "--model", model_path, *files, "--output", output, "--offsets"]
    assert alignseg(command) in (0, None)
    written = sorted(os.listdir(output))
    for stem in ("street0", "street1"):
        assert f"{stem}_color.png" in written and f"{stem}_overlay.png" in written, written
        assert any(name.startswith(f"{stem}_") and "align" in name for name in written), written


def main():
    assert keras.backend.backend() in ("jax", "torch"), keras.backend.backend()
    model = cases.tiny_alignseg()
    images, labels = cases.images(), cases.labels()
    before = model.get_weights()
    model.compile()  # the paper's recipe: SGD with poly decay, cross-entropy, mean IoU
    # Two steps of one batch shape: JAX compiles one train step.
    history = model.fit(images, labels, batch_size=2, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all() and len(history["loss"]) == 2, history
    assert all(0.0 <= value <= 1.0 for value in history["mean_iou"]), history
    assert any(not np.array_equal(old, new) for old, new in zip(before, model.get_weights()))
    path = tempfile.mkdtemp() + "/model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    check_inference_and_pictures(loaded, images)
    check_predict_command(path, os.path.dirname(path))
    for module in ("alignseg_keras.data", "alignseg_keras.export"):
        try:
            __import__(module)
        except ImportError:
            continue
        raise AssertionError(f"{module} imported without TensorFlow")
    print("ok")


if __name__ == "__main__":
    main()
