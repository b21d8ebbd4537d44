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
