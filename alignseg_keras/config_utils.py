"""What every model class of this library puts in, and takes from, its config."""

import collections
import contextlib
import os
import sys
import warnings

import keras


def model_config(model):
    """The `keras.Model` arguments of `model`'s config: name and trainable.

    Not its dtype policy: a saved model computes in the policy of the process
    that loads it (Keras' global policy), or in the one its loader asks for
    (`AlignSeg.from_preset(..., dtype=...)`, `inference.as_precision`), as
    keras-hub's preset loader gives a model (keras-hub saves a float policy and
    replaces it when loading; `without_saved_policy` does that for encoders).
    """
    return {"name": model.name, "trainable": model.trainable}


def deserialized(config, keys):
    """A copy of `config` with the serialized Keras objects at `keys` deserialized.

    Without a `"dtype"`: files of earlier versions saved the policy a model was
    built in, which never decided the policy it loads in (Keras' functional
    models drop the argument) and must not start to.
    """
    config = {key: value for key, value in config.items() if key != "dtype"}
    for key in keys:
        if isinstance(config.get(key), dict):
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def _is_plain_policy(value):
    """Whether `value` is a serialized float `DTypePolicy` (not a quantized policy or a
    `DTypePolicyMap`, which keep their layers' quantization)."""
    return isinstance(value, dict) and value.get("class_name") == "DTypePolicy"


def _policy_name(value):
    """The name of a policy serialized as a plain `DTypePolicy` or as a string, else None."""
    if isinstance(value, str):
        return value
    return value.get("config", {}).get("name") if _is_plain_policy(value) else None


def _plain_policy_names(config):
    """The names of the plain policies in a serialized config, one per layer."""
    if isinstance(config, dict):
        if _is_plain_policy(config):
            return [_policy_name(config)]
        if config.get("class_name") in ("InputLayer", "__keras_tensor__"):
            return []  # their "dtype" is a tensor's
        return [name for value in config.values() for name in _plain_policy_names(value)]
    if isinstance(config, list):
        return [name for value in config for name in _plain_policy_names(value)]
    return []


def replaced_policy(config, source, target=None):
    """A serialized config with every dtype policy named `source` (serialized, or a
    string as older Keras wrote them) set to `target`, or left out where `target` is
    None (the layer then takes the global policy when rebuilt).

    Policies of another name are layers pinned to a dtype (such as float32 outputs
    of a mixed-precision model) and stay; an InputLayer's or a tensor's `"dtype"`
    is a tensor's, not a policy, and stays too.
    """
    if isinstance(config, list):
        return [replaced_policy(value, source, target) for value in config]
    if not isinstance(config, dict) or config.get("class_name") in (
            "InputLayer", "__keras_tensor__"):
        return config
    if _is_plain_policy(config):
        if target is None or _policy_name(config) != source:
            return config
        return {**config, "config": {**config["config"], "name": target}}
    replaced = {}
    for key, value in config.items():
        if key == "dtype" and _policy_name(value) == source:
            if target is None:
                continue
            if isinstance(value, str):
                replaced[key] = target
                continue
        replaced[key] = replaced_policy(value, source, target)
    return replaced


def without_saved_policy(serialized):
    """A serialized model or layer (an encoder, an image converter) without the float
    policy it was built in, so that it is rebuilt in the policy of the process that
    loads it, as AlignSeg's own layers are.

    Removes the top-level `"dtype"` (keras-hub's backbones, a layer) and every
    layer's policy of that name; a plain functional model saves one per layer,
    and its most common one is the model's. Layers pinned to another policy
    (e.g. float32 outputs) and quantized policies stay, as keras-hub's preset
    loader keeps them.
    """
    names = _plain_policy_names(serialized)
    top = serialized.get("config", {}).get("dtype") if isinstance(serialized, dict) else None
    if _is_plain_policy(top):
        name = _policy_name(top)
    elif names:
        name = collections.Counter(names).most_common(1)[0][0]
    else:
        return serialized
    return replaced_policy(serialized, name)


def without_synchronized_batchnorm(serialized):
    """A serialized model or layer whose BatchNormalizations are not synchronised.

    `AlignSeg` synchronises them after building, when its `sync_batchnorm`
    asks for it (inside a multi-replica strategy by default); an encoder saved
    from such a model carries `synchronized: true` in its layers' configs, which
    Keras refuses on JAX and torch and which would synchronise a model loaded
    on one device whose `sync_batchnorm` says not to.
    """
    if isinstance(serialized, list):
        return [without_synchronized_batchnorm(item) for item in serialized]
    if not isinstance(serialized, dict):
        return serialized
    plain = {key: without_synchronized_batchnorm(value) for key, value in serialized.items()}
    if plain.get("synchronized") is True:
        plain["synchronized"] = False
    return plain


def computing_policy(component):
    """The name of the policy `component` computes in: a layer's own; for a model, the
    most common policy of its layers with weights. A model's reported policy does not
    say it: a functional model reports the global policy at its construction, and a
    model may not pass its `dtype` on to every layer (keras-hub's `MiTBackbone` 0.32
    does not). Layers pinned to another policy do not decide it."""
    if not isinstance(component, keras.Model):
        return component.dtype_policy.name
    names = [
        layer.dtype_policy.name
        for layer in component._flatten_layers(include_self=False, recursive=True)
        if layer.weights and not isinstance(layer, keras.Model)
    ]
    return collections.Counter(names).most_common(1)[0][0] if names else (
        component.dtype_policy.name)


_LIBRARY = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Top-level modules whose frames stand between a user's call and a check of this library:
# Keras' loops, the backends', and Python's threads (a tf.data pipeline runs its Python
# in one of TensorFlow's threads, a `PyDataset`'s workers in Keras' pool or, on JAX,
# in a `multiprocessing` thread pool).
FRAMEWORK_MODULES = frozenset({
    "keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch", "optree",
    "threading", "concurrent", "multiprocessing", "queue", "contextlib", "functools",
})


def _in_library(frame):
    """Whether `frame` runs this library's code (the tests beside the code, `*_test.py`,
    count as users), also AutoGraph's copy of it in a pipeline (a file of its own, in
    the module of the original)."""
    filename, module = frame.f_code.co_filename, frame.f_globals.get("__name__") or ""
    if filename.startswith(_LIBRARY):
        return not filename.endswith("_test.py")
    return module.split(".")[0] == __name__.split(".")[0] and not module.endswith("_test")


def _in_framework(frame):
    return (frame.f_globals.get("__name__") or "").split(".")[0] in FRAMEWORK_MODULES


def _first_user_frame(frame, skip_frameworks):
    """`(frame, level)`: the first of `frame` and its callers outside this library (and,
    with `skip_frameworks`, outside `FRAMEWORK_MODULES`), `level` 1 for `frame` itself;
    the frame is None where every caller is skipped."""
    level = 1
    while frame is not None and (
            _in_library(frame) or skip_frameworks and _in_framework(frame)):
        frame, level = frame.f_back, level + 1
    return frame, level


def stacklevel_outside_library():
    """The `stacklevel` for `warnings.warn` that names the first caller outside this
    library (the user's line; the tests beside the code, `*_test.py`, count as users),
    counted from the function that calls this one."""
    return _first_user_frame(sys._getframe(1), skip_frameworks=False)[1]


def user_location():
    """`(filename, lineno, module globals)` of the user's line that called into this
    library (past Keras' and the backends' frames, see `FRAMEWORK_MODULES`), or None
    where the stack holds none (a thread of a pipeline). Recorded when a call starts, for
    `warn_at_user_line` to name where no user's line is on the stack any more."""
    frame, _ = _first_user_frame(sys._getframe(1), skip_frameworks=True)
    if frame is None:
        return None
    return frame.f_code.co_filename, frame.f_lineno, frame.f_globals


def warn_at_user_line(message, origin=None, category=UserWarning):
    """`warnings.warn(message, category)` pointing at the user's line: the first caller
    outside this library, Keras and the backends (a generator's batches are checked
    inside Keras' loop, below the user's `fit`); where none is on the stack (a tf.data
    pipeline's thread, a `PyDataset` worker), at `origin` (`user_location()` recorded
    when the call started), filtered and counted as `warnings.warn` would there."""
    frame, level = _first_user_frame(sys._getframe(1), skip_frameworks=True)
    if frame is not None or origin is None:
        warnings.warn(message, category, stacklevel=level + 1 if frame is not None else 2)
        return
    filename, lineno, module_globals = origin
    warnings.warn_explicit(
        message, category, filename, lineno,
        module=module_globals.get("__name__"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        module_globals=module_globals,
    )


@contextlib.contextmanager
def global_dtype_policy(policy):
    """Keras' global dtype policy set to `policy` (a name, a `DTypePolicy` or its
    serialized form) inside the block (Keras keeps it per thread); None leaves it as
    it is."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras.dtype_policies.get(policy))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def set_model_dtype_policy(model, dtype):
    """Gives a functional `model` the policy `dtype` its layers were built in (Keras'
    functional models drop a `dtype` argument and report the global policy); None
    keeps the global one."""
    if dtype is not None:
        model.dtype_policy = dtype


def warn_if_policy_differs(component, what, dtype):
    """Warns that `component` (given built, `what` names it) computes in another
    policy than the `dtype` asked for the layers built around it."""
    if dtype is None:
        return
    wanted = keras.dtype_policies.get(dtype).name
    has = computing_policy(component)
    if has != wanted:
        warnings.warn(
            f"dtype={wanted!r} applies to the layers built here; the {what} given, "
            f"{component.name!r}, computes in {has!r} (most of its layers) and keeps it. "
            f"Build it with dtype={wanted!r} too, or under Keras' global policy "
            f"{wanted!r} if its class does not pass dtype to its layers.",
            stacklevel=stacklevel_outside_library(),
        )


def _sublayers(layer, path=""):
    """`(path, layer)` of `layer` and every layer inside it, parents first; a path joins
    the names from `layer` down with "/" ("" for `layer` itself)."""
    yield path, layer
    for child in layer._flatten_layers(include_self=False, recursive=False):
        yield from _sublayers(child, f"{path}/{child.name}" if path else child.name)


def frozen_layers(model):
    """The paths of the fewest layers of `model` whose `trainable=False` covers all frozen ones.

    A layer reached twice (an encoder's layers also belong to the pyramid model
    built on them) counts once; a frozen layer inside another frozen one is
    left out. Saved in a model's config by models that rebuild their layers
    from their arguments (`AlignSeg`): the layers' own flags would be lost.
    """
    first_paths, frozen = {}, []
    for path, layer in _sublayers(model):
        if id(layer) not in first_paths:
            first_paths[id(layer)] = path
            if not layer.trainable:
                frozen.append(layer)
    covered = {id(inner) for layer in frozen for _, inner in list(_sublayers(layer))[1:]}
    return [first_paths[id(layer)] for layer in frozen if id(layer) not in covered]


def freeze_layers(model, paths):
    """Sets `trainable=False` on the layers of `model` at `paths` (from `frozen_layers`)."""
    layers = dict(_sublayers(model))
    missing = [path for path in paths if path not in layers]
    if missing:  # e.g. a frozen auxiliary head, loaded without deep supervision
        warnings.warn(
            f"{model.name}: the saved configuration freezes layers this model does not have "
            f"(left out): {missing[:5]}.", stacklevel=2
        )
    for path in paths:
        if path in layers:
            # Set True first: a functional model built with trainable=False (as its own
            # saved config builds it) has the flag without having passed it to its layers,
            # and setting the same value again does not pass it on.
            layers[path].trainable = True
            layers[path].trainable = False


def keras_file_config(path):
    """The model config a `.keras` file holds (its `config.json`), as a dict."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))
