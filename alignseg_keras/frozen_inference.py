"""Inference with the weights frozen into the graph as constants (TensorFlow only).

On a CPU, TensorFlow runs every convolution through oneDNN, which wants the
kernel in its own blocked layout. A kernel read from a variable may change
between calls, so TensorFlow reorders it into that layout at every call: for
AlignSeg-R101 165 reorders, 50-66 ms of a 0.35 s bfloat16 inference at 512x512
on a Zen 5 EPYC (oneDNN's log). A kernel that is a constant of the graph is
reordered once and cached, and TensorFlow's graph optimiser also folds the
kernels' float32 -> bfloat16 casts away. `FrozenInferenceModel` is that
graph: the model as the inference functions run it in the precision asked
for (`inference_model`: in bfloat16 with BatchNormalization folded into the
convolutions), traced once for images of any size, its variables replaced by constants
(`convert_variables_to_constants_v2`). On a 2-core Zen 5 EPYC it runs
AlignSeg-R101 in 0.72-0.79x the Keras model's time at 256x256, 0.89-0.98x at
512x512 in bfloat16 (0.89-0.95x in float32), and no faster at 1024x2048: the
reorders cost the same whatever the image size (docs/benchmarks.md, "Weights
frozen into the graph").

The price: building it takes about 20 s for AlignSeg-R101 (freezing, then TensorFlow's
optimisation of a graph that holds every weight, done at construction on a small
image so that the first real call is as fast as the others), and memory: on a 2-core
Zen 5 EPYC the process peaks at 5.0 GiB during construction and keeps 3.5 GiB at
512x512 in bfloat16, against a 1.6 GiB peak for the Keras model (5.0 GiB and 4.2-4.3
kept against a 2.6 GiB peak at 1024x2048). Against the Keras model's 2 s first call it
pays off after 500-1000 images of 512x512 in bfloat16. A
frozen model is a snapshot: later changes of the Keras model's weights do not
reach it. It is for inference in this process; to serve, export the Keras
model (`alignseg_keras.export`).

Every function of `alignseg_keras.inference` takes it in place of a model:

```python
frozen = FrozenInferenceModel(model, "bfloat16")
for batch in batches:
    probabilities = predict_whole(frozen, batch)
```
"""

import ctypes
import gc
import sys

import keras
import numpy as np

from alignseg_keras.checks import check_image_batch_shape
from alignseg_keras.checks import check_image_dtype
from alignseg_keras.inference import check_precision
from alignseg_keras.inference import inference_model
from alignseg_keras.inference import input_image_size
from alignseg_keras.inference import output_classes

# The image of the call that makes TensorFlow optimise the frozen graph at construction:
# small, since the optimisation does not depend on the size, and a multiple of the
# networks' output stride (32), which any size-agnostic segmenter takes.
WARM_UP_IMAGE_SIZE = (64, 64)


class FrozenInferenceModel:
    """A model's inference in one precision, its weights constants of a TensorFlow graph.

    Called on images it returns logits as a TensorFlow tensor, like a Keras
    model. It has what the inference functions read from a model:
    `predict_on_batch`, `num_classes` and `normalization` (the model's, for the
    padding colour of sliding windows), `image_size` (the model's input height
    and width, None where it takes any) and `precision`, the precision it
    computes in, which a `precision=` argument of those functions must match.

    Args:
        model: a built Keras model from RGB images `(B, H, W, 3)` (0..255) to
            logits `(B, H, W, classes)`, such as `AlignSeg`; not changed.
        precision: `"float32"` or `"bfloat16"` (Keras' `mixed_bfloat16`:
            bfloat16 arithmetic, float32 logits).

    Example:
    ```python
    frozen = FrozenInferenceModel(model, "bfloat16")
    logits = frozen.predict_on_batch(images)  # float32 numpy, (B, H, W, classes)
    labels = predict_whole(frozen, images).argmax(-1)
    ```
    """

    def __init__(self, model, precision="float32"):
        check_tensorflow_backend("FrozenInferenceModel", "on other backends run the model itself")
        self.precision = check_precision(precision)
        self.name = f"{model.name}_frozen_{precision}"
        self.num_classes = output_classes(model)
        self.normalization = getattr(model, "normalization", None)
        self.image_size = input_image_size(model)
        self._function = _frozen_function(inference_model(model, precision), self.image_size)
        # The inference copy and the traced function are garbage now, their memory free
        # but kept by the allocator; give it back before the optimisation's own peak.
        release_freed_memory()
        self._optimize(warm_up_image_size(model))

    def _optimize(self, image_size):
        """Let TensorFlow optimise the graph now, on one image of `image_size`, and give back what that freed.

        TensorFlow optimises a function's graph at its first call, for any image size
        (the sizes are not part of the graph), copying the constants a few times while it
        does: for AlignSeg-R101 the process rises by 2.8 GiB and, left alone, stays there,
        because glibc's allocator holds the 1.7 GiB of it that was freed. Done here, those pages go back to the system before
        the first image comes, and the first call at a real size is no slower than later ones.
        """
        import tensorflow as tf

        self._function(tf.zeros((1, *image_size, 3), tf.float32))
        release_freed_memory()

    def __call__(self, images):
        """Float32 logits `(B, H, W, classes)` as a TensorFlow tensor, for RGB `images`
        `(B, H, W, 3)` of a numeric dtype (`checks.check_image_dtype`); empty logits for an empty batch or 0-sized images."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        check_image_dtype(images.dtype)
        images = tf.cast(images, tf.float32)
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"{self.name} takes RGB images of shape (batch, height, width, 3); received "
                f"shape {tuple(images.shape)}."
            )
        check_image_batch_shape(tuple(images.shape), self.image_size)
        if images.shape.num_elements() == 0:
            return tf.zeros((*images.shape[:3], self.num_classes), tf.float32)
        (logits,) = self._function(images)
        return logits

    def predict_on_batch(self, images):
        """Float32 logits `(B, H, W, classes)` as a NumPy array, for RGB `images` `(B, H, W, 3)`."""
        return self(np.asarray(images)).numpy()


def _frozen_function(model, image_size=(None, None)):
    """`model`'s inference traced for float32 images of `image_size` (None: any height
    or width), variables made constants."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    traced = tf.function(lambda images: model(images, training=False))
    concrete = traced.get_concrete_function(tf.TensorSpec((None, *image_size, 3), tf.float32))
    return convert_variables_to_constants_v2(concrete)


def check_tensorflow_backend(subject, fix):
    """Raises `ValueError` naming `subject` and `fix` unless Keras runs on TensorFlow,
    the only backend whose graphs `FrozenInferenceModel` freezes."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"{subject} freezes a TensorFlow graph and needs KERAS_BACKEND=tensorflow "
            f"(current: {backend!r}); {fix}."
        )


def warm_up_image_size(model):
    """`(height, width)` of the image that `FrozenInferenceModel` optimises its graph on:
    the model's own input size where it has one, `WARM_UP_IMAGE_SIZE` where it takes any."""
    size = input_image_size(model)
    return size if None not in size else WARM_UP_IMAGE_SIZE


def release_freed_memory():
    """Collect Python's garbage and give the freed pages of the C heap back to the system.

    glibc's allocator keeps memory that was freed for later allocations, so a process
    that once needed a lot stays that large. `malloc_trim(0)` returns every free page it
    holds. It exists only in glibc: elsewhere (macOS, Windows, musl) this only collects.

    Returns:
        True where `malloc_trim` was called.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
