"""TensorFlow `tf.distribute` helpers (TensorFlow backend only)."""


def replicas_in_sync():
    """Number of replicas of the current `tf.distribute` strategy (1 outside one,
    and on the other Keras backends, without importing TensorFlow)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync
