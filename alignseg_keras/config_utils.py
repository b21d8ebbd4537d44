"""What every model class of this library puts in, and takes from, its config."""

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
