"""AlignSeg on JAX in a Python where TensorFlow cannot be imported.

Blocks every `tensorflow` import, then builds, predicts, trains one step,
saves and reloads a tiny model; prints "ok". Only `alignseg_keras.data`
(tf.data) and `alignseg_keras.export` (SavedModel) need TensorFlow.
"""

import importlib.abc
import sys
import tempfile


class BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError(f"No module named {name!r} (blocked by the test)")


sys.meta_path.insert(0, BlockTensorFlow())

import keras  # noqa: E402
import numpy as np  # noqa: E402

import cases  # noqa: E402


def main():
    assert keras.backend.backend() == "jax"
    model = cases.tiny_alignseg()
    images, labels = cases.images(), cases.labels()
    model.compile(metrics=[])
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    path = tempfile.mkdtemp() + "/model.keras"
    model.save(path)
    np.testing.assert_array_equal(
        keras.saving.load_model(path).predict(images, verbose=0), model.predict(images, verbose=0)
    )
    for module in ("alignseg_keras.data", "alignseg_keras.export"):
        try:
            __import__(module)
        except ImportError:
            continue
        raise AssertionError(f"{module} imported without TensorFlow")
    print("ok")


if __name__ == "__main__":
    main()
