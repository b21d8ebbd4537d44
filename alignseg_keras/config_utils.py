"""What every model class of this library puts in, and takes from, its config."""

import contextlib
import warnings

import keras


def model_config(model):
    """The `keras.Model` arguments of `model`'s config: name and trainable.

    Not its dtype policy, as keras-hub's backbones: a saved model computes in
    the policy of the process that loads it (Keras' global policy), or in the
    one its loader asks for (`AlignSeg.from_preset(..., dtype=...)`,
    `inference.as_precision`).
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


@contextlib.contextmanager
def global_dtype_policy(policy):
    """Keras' global dtype policy set to `policy` inside the block (Keras keeps it per
    thread); None leaves it as it is."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
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
    has = component.dtype_policy.name
    if has != wanted:
        warnings.warn(
            f"dtype={wanted!r} applies to the layers built here; the {what} given, "
            f"{component.name!r}, was built in {has!r} and keeps it. Build it with "
            f"dtype={wanted!r} too (or set Keras' global policy before building both).",
            stacklevel=3,
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
