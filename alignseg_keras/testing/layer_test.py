"""The checks every layer, backbone and segmenter test runs.

After Keras' `run_layer_test` (keras/src/testing/test_case.py) and keras-hub's
`run_vision_backbone_test` / `run_task_test`, written for this library's
layers, which take one or several image-like inputs of any height and width.
"""

import json

import keras
import numpy as np

# A bfloat16 result may differ from the float32 one by a few bfloat16 ulps
# (8 bits of mantissa: 2^-8 relative) per layer.
BFLOAT16_RELATIVE_TOLERANCE = 5e-2


def _random_inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape).astype("float32") for shape in shapes]


def _as_inputs(values):
    return values[0] if len(values) == 1 else values


def _shapes(outputs):
    return [tuple(output.shape) for output in keras.tree.flatten(outputs)]


def _symbolic_shape(shape):
    """A concrete test shape with its height and width made unknown, as in a model."""
    return (shape[0], None, None) + tuple(shape[3:]) if len(shape) == 4 else shape


def check_config_round_trip(layer, init_kwargs):
    """`get_config` holds every init argument, `from_config` rebuilds it, Keras finds the class."""
    config = layer.get_config()
    for key, value in init_kwargs.items():
        assert key in config, f"get_config() lacks {key!r}"
        assert json.dumps(config[key]) == json.dumps(value), f"get_config()[{key!r}]"
    clone = type(layer).from_config(config)
    assert json.dumps(clone.get_config()) == json.dumps(config)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert "dtype" in config, "get_config() lacks the dtype policy"


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shapes,
    expected_output_shapes,
    call_kwargs=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    run_training_check=True,
    run_mixed_precision_check=True,
):
    """Checks a layer the way Keras checks its own.

    1. The config round trip (every init argument in `get_config`, the dtype
       policy too; `from_config`; registered with Keras' serialisation).
    2. Symbolic shapes: called on `KerasTensor`s with unknown height and
       width, and with the concrete test shapes, the outputs have the shapes
       the layer's eager call gives.
    3. Eager call on random inputs: `expected_output_shapes`, finite values.
    4. Weight counts, when given.
    5. A training step (a model around the layer, SGD towards outputs of
       ones) keeps every trainable weight finite and changes some (weights
       behind a zero-initialised offset head get no gradient in one step).
    6. Mixed precision: under `"mixed_bfloat16"` the layer computes in
       bfloat16 (float32 variables) and agrees with float32 to bfloat16
       rounding.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict of constructor arguments.
        input_shapes: list of input shapes (one per input, batch included).
        expected_output_shapes: list of output shapes, in `keras.tree.flatten` order.
        call_kwargs: dict of call arguments (e.g. `{"return_offsets": True}`).
        expected_num_trainable_weights, expected_num_non_trainable_weights:
            ints or None.
        run_training_check, run_mixed_precision_check: bools.

    Example:
    ```python
    run_layer_test(ResidualConvBlock, {"filters": 8}, [(2, 9, 11, 16)], [(2, 9, 11, 8)])
    ```
    """
    call_kwargs = call_kwargs or {}
    expected = [tuple(shape) for shape in expected_output_shapes]
    layer = layer_cls(**init_kwargs)
    values = _random_inputs(input_shapes)
    outputs = layer(_as_inputs(values), **call_kwargs)
    assert _shapes(outputs) == expected, f"eager output shapes {_shapes(outputs)} != {expected}"
    for output in keras.tree.flatten(outputs):
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(output)))
    check_config_round_trip(layer, init_kwargs)
    _check_symbolic_shapes(layer_cls, init_kwargs, input_shapes, call_kwargs, expected)
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    if run_training_check and layer.trainable_weights:
        _check_training_step(layer_cls, init_kwargs, values, call_kwargs)
    if run_mixed_precision_check:
        _check_mixed_precision(layer_cls, init_kwargs, values, call_kwargs)


def _check_symbolic_shapes(layer_cls, init_kwargs, input_shapes, call_kwargs, expected):
    for known_size in (True, False):
        shapes = input_shapes if known_size else [_symbolic_shape(s) for s in input_shapes]
        symbolic = [keras.KerasTensor(shape) for shape in shapes]
        outputs = layer_cls(**init_kwargs)(_as_inputs(symbolic), **call_kwargs)
        for output, shape in zip(keras.tree.flatten(outputs), expected):
            assert len(output.shape) == len(shape), f"symbolic {output.shape} != {shape}"
            spatial_known = (True,) + (known_size,) * (len(shape) - 2) + (True,)
            for size, wanted, input_known in zip(output.shape, shape, spatial_known):
                # Unknown input sizes may leave the output's height and width unknown.
                allowed = (wanted,) if input_known else (wanted, None)
                assert size in allowed, f"symbolic {output.shape} != {shape}"


def _model_around(layer, values, call_kwargs):
    inputs = [keras.Input(value.shape[1:]) for value in values]
    outputs = layer(_as_inputs(inputs), **call_kwargs)
    return keras.Model(_as_inputs(inputs), keras.tree.flatten(outputs))


def _check_training_step(layer_cls, init_kwargs, values, call_kwargs):
    layer = layer_cls(**init_kwargs)
    model = _model_around(layer, values, call_kwargs)
    before = [np.array(weight) for weight in layer.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    targets = [np.ones(shape, "float32") for shape in _shapes(model(_as_inputs(values)))]
    model.train_on_batch(_as_inputs(values), targets)
    changed = 0
    for weight, old in zip(layer.trainable_weights, before):
        new = np.array(weight)
        assert np.all(np.isfinite(new)), f"{weight.path} is not finite after a step"
        changed += not np.array_equal(new, old)
    assert changed, "no trainable weight changed in a training step"


def _check_mixed_precision(layer_cls, init_kwargs, values, call_kwargs):
    reference = layer_cls(**init_kwargs)
    expected = keras.tree.flatten(reference(_as_inputs(values), **call_kwargs))
    layer = layer_cls(**init_kwargs, dtype="mixed_bfloat16")
    layer(_as_inputs(values), **call_kwargs)  # builds
    # `dtype` reaches every sublayer, those made in `build` too (Keras' global policy
    # is float32 here, so a sublayer left to it would show).
    for sublayer in layer._flatten_layers(include_self=False, recursive=True):
        assert sublayer.dtype_policy.name == "mixed_bfloat16", (
            f"{sublayer.name} ({type(sublayer).__name__}) computes in "
            f"{sublayer.dtype_policy.name}, not in the layer's mixed_bfloat16"
        )
    for weight, reference_weight in zip(layer.weights, reference.weights):
        assert weight.dtype == "float32", f"{weight.path} is {weight.dtype} under mixed precision"
        weight.assign(reference_weight)
    outputs = keras.tree.flatten(layer(_as_inputs(values), **call_kwargs))
    for output, wanted in zip(outputs, expected):
        output = keras.ops.convert_to_numpy(keras.ops.cast(output, "float32"))
        wanted = keras.ops.convert_to_numpy(wanted)
        scale = max(float(np.abs(wanted).max()), 1e-3)
        error = float(np.abs(output - wanted).max()) / scale
        assert error < BFLOAT16_RELATIVE_TOLERANCE, f"bfloat16 differs by {error:.3f}"


def run_backbone_test(backbone, images, expected_output_shapes, tmp_path):
    """Checks an `AlignSegBackbone` as keras-hub's `run_vision_backbone_test` checks theirs.

    Its outputs have `expected_output_shapes` (a dict), its config round-trips
    (same JSON, same parameter count), and a `.keras` file gives it back with
    the same outputs.
    """
    outputs = backbone(images)
    assert {key: tuple(value.shape) for key, value in outputs.items()} == {
        key: tuple(shape) for key, shape in expected_output_shapes.items()
    }
    config = backbone.get_config()
    clone = type(backbone).from_config(config)
    assert json.dumps(clone.get_config()) == json.dumps(config)
    assert clone.count_params() == backbone.count_params()
    _check_keras_file(backbone, images, tmp_path / "backbone.keras")


def run_task_test(task, images, masks, tmp_path):
    """Checks a segmenter as keras-hub's `run_task_test` checks theirs.

    `predict` gives logits at the input size; `compile()` (the paper's recipe)
    and one `fit` step give a finite loss; a `.keras` file and a preset
    directory give back the same predictions.
    """
    logits = task.predict(images, verbose=0)
    assert logits.shape == tuple(images.shape[:3]) + (task.num_classes,)
    task.compile()
    history = task.fit(images, masks, batch_size=len(images), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    _check_keras_file(task, images, tmp_path / "task.keras")
    task.save_to_preset(tmp_path / "preset")
    restored = type(task).from_preset(tmp_path / "preset")
    np.testing.assert_array_equal(
        restored.predict(images, verbose=0), task.predict(images, verbose=0)
    )


def _check_keras_file(model, images, path):
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    outputs = zip(keras.tree.flatten(restored(images)), keras.tree.flatten(model(images)))
    for output, expected in outputs:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(output), keras.ops.convert_to_numpy(expected)
        )
