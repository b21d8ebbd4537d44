"""The base of `AlignSeg`: `fit`, `evaluate` and `predict` with their data checked in one place.

keras-hub's tasks preprocess their data in one base class (`PipelineModel`)
that overrides `fit`, `evaluate` and `predict`; `ImageSegmenter` is that place
for a segmenter's input checks (`checked_data`), so that the model class above
it keeps only the architecture and the training recipe. `fit` also adds
`PolyScheduleLength`, which reads the length of the poly schedule from the
steps and epochs that Keras itself counts.
"""

import inspect

import keras
import numpy as np

from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import check_compiled_call
from alignseg_keras.checks import check_finite_images
from alignseg_keras.checks import check_image_batch_shape
from alignseg_keras.checks import check_sample_weight
from alignseg_keras.checks import check_weights_may_change
from alignseg_keras.checks import scale_warning_of
from alignseg_keras.models import data_checks
from alignseg_keras.optimizers import PolyScheduleLength


def _image_shape_of(x):
    """The image shape of arrays or of a `tf.data` pipeline's elements; None if not static."""
    spec = getattr(x, "element_spec", None)
    if spec is not None:
        x = spec[0] if isinstance(spec, (tuple, list)) else spec
    shape = getattr(x, "shape", None)
    if isinstance(x, dict) or shape is None or getattr(shape, "rank", 0) is None:
        return None  # an unknown rank is checked batch by batch
    return tuple(shape)


_CLASS_WEIGHT = (
    "`class_weight` weights each sample by its one label (Keras' classification); masks hold "
    "a label per pixel. Weight the classes in the loss instead, e.g. "
    "`compile(loss=SegmentationCrossEntropy(class_weights=[...]))` (docs/losses.md), or give "
    "per-pixel weights as `sample_weight` (batch, H, W)."
)


def loss_ignore_label(loss, default=IGNORE_INDEX):
    """The label `loss` ignores: its `ignore_index` (this library's losses), the
    `ignore_class` of Keras' sparse cross-entropy (None: it ignores no label), or
    `default` for a loss that says neither (None too: `default`)."""
    if hasattr(loss, "ignore_index"):
        return loss.ignore_index
    if loss == "sparse_categorical_crossentropy" or loss is keras.losses.sparse_categorical_crossentropy:
        return None  # Keras' own, by name or function: it ignores no label
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        if "ignore_class" in config:
            return config["ignore_class"]
    return default


def _given_arguments(method, args, kwargs):
    """The arguments given to a `keras.Model` method, by name (positional ones included)."""
    bound = inspect.signature(method).bind(None, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop("self")
    for name, parameter in inspect.signature(method).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(name, {}))
    return arguments


_NO_IMAGES = (
    "This fit call has no training batches: the data is empty. "
    "Pass at least one image and its mask."
)
_NO_BATCH = (
    "This fit call has no training batches: the data gave none (an empty dataset, or fewer "
    "examples than the batch size where incomplete batches are dropped, as "
    "`training_pipeline` drops them). Nothing was trained."
)


class _RefuseEmptyFit(keras.callbacks.Callback):
    """Raises before the first step when Keras counts no training batches, and at the
    end of the first epoch when data of a length Keras could not count gave none."""

    def on_train_begin(self, logs=None):
        if self.params.get("steps") == 0:
            raise ValueError(_NO_IMAGES)

    def on_epoch_begin(self, epoch, logs=None):
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if not self.batches and not self.model.stop_training:
            raise ValueError(_NO_BATCH)


class _KeepStateUntilFirstStep(keras.callbacks.Callback):
    """Puts a JAX model's variables back after an error in `fit`, `evaluate` or `predict`.

    Keras' JAX loops take the values out of the model's variables before their first
    step (to hold one copy of the weights) and put them back from a step's results:
    `fit` in a `finally` only once a step has run, `evaluate` and `predict` only when
    they end normally. An error in a step (a batch the data checks refuse: in a
    pipeline or a PyDataset it surfaces at the first step, prefetched) left every
    variable empty and the model's trained weights lost. This keeps the values from the
    loop's start until its first step has ended (then Keras holds the last step's), and
    `restore` puts the last step's, or these, back.
    """

    # Its batch hooks only drop references: Keras may still dispatch the batch callbacks
    # asynchronously (a callback overriding them without this flag makes every step wait).
    async_safe = True

    def __init__(self):
        super().__init__()
        self._values = None

    def _keep(self, logs=None):
        model = self.model
        variables = (list(model.trainable_variables) + list(model.non_trainable_variables)
                     + list(model.metrics_variables))  # what Keras' JAX loops take out
        optimizer = getattr(model, "optimizer", None)  # none before compile on JAX
        if optimizer is not None and optimizer.built:
            variables += list(optimizer.variables)
        self._values = [(variable, variable._value) for variable in variables]

    def _release(self, batch, logs=None):
        self._values = None

    on_train_begin = on_test_begin = on_predict_begin = _keep
    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _release

    def restore(self, model):
        """After an error: the last step's state, or the values before the first step."""
        model.jax_state_sync()
        for variable, value in self._values or ():
            if variable._value is None:
                variable._value = value
        self._values = None


def _add_callbacks(arguments, added, model):
    """`added` (callbacks) first among the `callbacks` of a `fit`, `evaluate` or `predict`
    call's `arguments` (a list, or `fit`'s `CallbackList` for its validation)."""
    callbacks = arguments.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        for callback in added:
            callback.set_model(model)
            callback.set_params(callbacks.params)
        callbacks.callbacks[:0] = added
    else:
        arguments["callbacks"] = list(added) + list(callbacks or [])


def _run_keeping_state(model, method, arguments):
    """`method(**arguments)` (a `keras.Model` loop); on JAX the model keeps its variables
    when it fails (`_KeepStateUntilFirstStep`)."""
    if keras.backend.backend() != "jax":
        return method(**arguments)
    keeper = _KeepStateUntilFirstStep()
    _add_callbacks(arguments, [keeper], model)
    try:
        return method(**arguments)
    except BaseException:
        keeper.restore(model)
        raise
    finally:  # out of `fit`'s CallbackList again: its validation adds one every epoch
        if isinstance(arguments["callbacks"], keras.callbacks.CallbackList):
            arguments["callbacks"].callbacks.remove(keeper)


def _check_compiled_call(images):
    """`checks.check_compiled_call` for a call of a model on `images`; symbolic inputs
    (a functional model being built) pass."""
    if not isinstance(images, keras.KerasTensor):
        check_compiled_call(keras.backend.backend())


class StateKeepingModel(keras.Model):
    """A functional `keras.Model` whose `fit`, `evaluate` and `predict` put its variables
    back when they fail on JAX (`_KeepStateUntilFirstStep`), as `ImageSegmenter`'s do.

    For models that share layers with an `ImageSegmenter` (`AlignSeg.offset_model`):
    an error in their own loop on JAX would otherwise leave the shared variables
    empty, and the segmenter unusable.

    Example:
    ```python
    offsets = StateKeepingModel(model.inputs[0], model.offset_outputs)
    ```
    """

    def __call__(self, *args, **kwargs):
        """Keras' `__call__`, refusing an eager call where TensorFlow freezes oneDNN
        kernels (it gave offsets off by 18-84%; `checks.check_compiled_call`)."""
        _check_compiled_call(args[0] if args else kwargs.get("inputs"))
        return super().__call__(*args, **kwargs)

    def fit(self, *args, **kwargs):
        return _run_keeping_state(self, super().fit, _given_arguments(keras.Model.fit, args, kwargs))

    def evaluate(self, *args, **kwargs):
        arguments = _given_arguments(keras.Model.evaluate, args, kwargs)
        return _run_keeping_state(self, super().evaluate, arguments)

    def predict(self, *args, **kwargs):
        arguments = _given_arguments(keras.Model.predict, args, kwargs)
        return _run_keeping_state(self, super().predict, arguments)


class ImageSegmenter(keras.Model):
    """A `keras.Model` for segmentation whose `fit`, `evaluate` and `predict` check their data.

    The base of `AlignSeg`, and the one place where its inputs are checked
    (`checked_data`): image batches must have shape `(batch, H, W, 3)` and
    finite values; masks must have their images' height and width and hold
    class ids below `num_classes` or the ignore label (`ignore_index`). Where
    a subclass states its `normalization` (a dict with `mean` and `std`),
    images in another scale than it normalises are warned about, once per
    `fit`, `evaluate` or `predict` (0..1 images for a model normalising 0..255
    values, or the reverse; not by the `*_on_batch` methods, which loops call).
    Arrays are checked up front; `tf.data` pipelines, generators and
    `keras.utils.PyDataset`s batch by batch as they are read (see
    `alignseg_keras.models.data_checks`). `fit` also refuses data that gives
    no training batch, leaves the order of pipelines and generators alone (no
    `shuffle` warning), and adds a `PolyScheduleLength` callback, which fits a
    `WarmupPolynomialDecay` compiled without `total_steps` to the steps
    Keras counts for that `fit`. `predict` on an empty batch returns empty
    logits without running the network. On TensorFlow, `fit` and
    `train_on_batch` refuse to start where `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS` is
    set, under which every step would compute with the initial weights
    (`checks.check_weights_may_change`).

    A subclass sets `num_classes`; the ignore label is the compiled loss's
    `ignore_index` (255 when it has none).

    Example:
    ```python
    class MySegmenter(ImageSegmenter):
        ...  # a functional model from images to logits, with `self.num_classes`
    ```
    """

    def __call__(self, *args, **kwargs):
        """Keras' `__call__`, refusing NumPy images with a NaN or infinite value, as
        `predict` does: one such pixel made every logit of the image NaN, without a word;
        and refusing an eager call on TensorFlow under `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`,
        which gives wrong logits there (`checks.check_compiled_call`). Tensors (already on
        a device) are otherwise passed on unchecked, as by the `*_on_batch` methods."""
        images = args[0] if args else kwargs.get("inputs")
        if isinstance(images, dict):  # {input name: images}; another key is `call`'s error
            images = images.get(self.inputs[0].name) if self.inputs else None
        if isinstance(images, np.ndarray):
            check_finite_images(images)
        _check_compiled_call(images)
        return super().__call__(*args, **kwargs)

    @property
    def ignore_index(self):
        """The label the compiled loss ignores (`loss_ignore_label`)."""
        return loss_ignore_label(getattr(self, "loss", None))

    def scale_warning(self):
        """A fresh `checks.ScaleWarning` for the model's `normalization` (a dict with
        `mean` and `std`, where a subclass states one), or None."""
        return scale_warning_of(getattr(self, "normalization", None))

    def checked_data(self, x, y=None, masks=True, scale_warning=None):
        """Returns `(x, y)` checked for Keras: arrays now, batch sources batch by batch.

        Args:
            x: images (array), a `tf.data.Dataset`, a generator or a `PyDataset`.
            y: masks when `x` is an array, else None.
            masks: bool, whether masks are checked too (False for `predict`).
            scale_warning: None, or the call's `checks.ScaleWarning`
                (`self.scale_warning()`), which warns once about images in
                another scale than the model normalises.
        """
        if isinstance(x, dict) and len(x) == 1:  # {input name: images}
            ((name, images),) = x.items()
            images, y = self.checked_data(images, y, masks, scale_warning)
            return {name: images}, y
        shape = _image_shape_of(x)
        if shape is not None:  # the size too, where the model fixes it
            check_image_batch_shape(shape, tuple(getattr(self, "image_shape", ()))[:2])
        num_classes = self.num_classes if masks else None
        return data_checks.checked_data(x, y, num_classes, self.ignore_index, scale_warning)

    def _checked_validation_data(self, data, scale_warning):
        if isinstance(data, (tuple, list)) and len(data) >= 2:
            x, y = self.checked_data(data[0], data[1], scale_warning=scale_warning)
            return (x, y, *data[2:])
        return self.checked_data(data, scale_warning=scale_warning)[0]

    def fit(self, *args, **kwargs):
        """Keras' `fit` on checked data, with the poly schedule fitted to it (see the class)."""
        arguments = _given_arguments(keras.Model.fit, args, kwargs)
        if arguments.get("class_weight") is not None:  # Keras failed in a NumPy conversion
            raise ValueError(_CLASS_WEIGHT)
        x = arguments.get("x")
        if data_checks.is_empty_array(x) and len(x) == 0:  # before Keras' torch sampler fails
            raise ValueError(_NO_IMAGES)
        if data_checks.shuffles_itself(x):
            arguments.setdefault("shuffle", False)
        check_sample_weight(arguments.get("sample_weight"))
        scale_warning = self.scale_warning()  # once for the data and the validation data
        arguments["x"], arguments["y"] = self.checked_data(x, arguments.get("y"),
                                                           scale_warning=scale_warning)
        if arguments.get("validation_data") is not None:
            arguments["validation_data"] = self._checked_validation_data(
                arguments["validation_data"], scale_warning
            )
        _add_callbacks(arguments, [_RefuseEmptyFit(), PolyScheduleLength()], self)
        with data_checks.data_errors(x):
            try:
                return _run_keeping_state(self, super().fit, arguments)
            except StopIteration:  # Keras on JAX, building the step from data that gave none
                raise ValueError(_NO_BATCH) from None

    def make_train_function(self, force=False):
        """Keras' training step (`fit`, `train_on_batch`), refused where the weights could not
        change (`checks.check_weights_may_change`)."""
        check_weights_may_change(keras.backend.backend())
        return super().make_train_function(force=force)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """Keras' `train_on_batch`, after checking NumPy images and masks as `fit` does.

        Tensors (a pipeline's, or already on a device) are passed on unchecked:
        checking them would copy every batch back to the host.
        """
        return super().train_on_batch(*self._checked_host_batch(x, y), *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        """Keras' `test_on_batch`, after checking NumPy images and masks as `evaluate` does."""
        return super().test_on_batch(*self._checked_host_batch(x, y), *args, **kwargs)

    def predict_on_batch(self, x):
        """Keras' `predict_on_batch`, after checking NumPy images as `predict` does."""
        return super().predict_on_batch(self._checked_host_batch(x, None, masks=False)[0])

    def _checked_host_batch(self, x, y, masks=True):
        """A batch of a loop (the `*_on_batch` methods): its scale is not warned about,
        which would be at every batch (the inference functions warn once for all)."""
        images = next(iter(x.values())) if isinstance(x, dict) and len(x) == 1 else x
        if not isinstance(images, np.ndarray):
            return x, y
        y = np.asarray(y) if masks and y is not None else y
        return self.checked_data(x, y, masks=masks)

    def evaluate(self, *args, **kwargs):
        """Keras' `evaluate`, after checking images and masks as `fit` does."""
        arguments = _given_arguments(keras.Model.evaluate, args, kwargs)
        x = arguments.get("x")
        check_sample_weight(arguments.get("sample_weight"))
        if not arguments.get("_use_cached_eval_dataset"):  # else fit's validation, checked
            arguments["x"], arguments["y"] = self.checked_data(x, arguments.get("y"),
                                                               scale_warning=self.scale_warning())
        with data_checks.data_errors(x):
            return _run_keeping_state(self, super().evaluate, arguments)

    def predict(self, *args, **kwargs):
        """Keras' `predict`, after checking that the images are finite.

        An empty batch or 0-sized images give empty logits
        `(batch, height, width, num_classes)` without running the network.
        """
        arguments = _given_arguments(keras.Model.predict, args, kwargs)
        x = arguments.get("x")
        arguments["x"], _ = self.checked_data(x, masks=False, scale_warning=self.scale_warning())
        if data_checks.is_empty_array(x):
            return np.zeros(tuple(x.shape[:3]) + (self.num_classes,), "float32")
        with data_checks.data_errors(x):
            return _run_keeping_state(self, super().predict, arguments)
