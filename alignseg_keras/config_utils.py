"""What every model class of this library puts in, and takes from, its config."""

import warnings

import keras


def model_config(model):
    """The `keras.Model` arguments of `model`'s config: name, trainable and dtype policy."""
    return {
        "name": model.name,
        "trainable": model.trainable,
        "dtype": keras.saving.serialize_keras_object(model.dtype_policy),
    }


def deserialized(config, keys):
    """A copy of `config` with the serialized Keras objects at `keys` deserialized."""
    config = dict(config)
    for key in keys:
        if isinstance(config.get(key), dict):
            config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def _sublayers(layer, path=""):
    """`(path, layer)` of `layer` and every layer inside it, parents first; a path joins
    the names from `layer` down with "/" ("" for `layer` itself)."""
    yield path, layer
    for child in layer._flatten_layers(include_self=False, recursive=False):
        yield from _sublayers(child, f"{path}/{child.name}" if path else child.name)


def frozen_layers(model):
    """The paths of the layers of `model` set `trainable=False` under a trainable parent.

    Saved in a model's config by models that rebuild their layers from their
    arguments (`AlignSeg`): the layers' own `trainable` flags would be lost.
    """
    frozen, seen = [], set()
    for path, layer in _sublayers(model):
        parent = path.rpartition("/")[0] if "/" in path else ("" if path else None)
        if not layer.trainable and (parent is None or parent not in seen):
            frozen.append(path)
        if not layer.trainable:
            seen.add(path)
    return frozen


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
            layers[path].trainable = False
