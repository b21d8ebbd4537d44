"""What differs between the TensorFlow and JAX backends in the benchmarks.

`select_backend()` must run before Keras is imported: it keeps a
`KERAS_BACKEND` already set, else picks TensorFlow when it is installed and
JAX otherwise (a GPU machine with JAX only).
"""

import importlib.util
import os


def select_backend():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "KERAS_BACKEND" not in os.environ:
        has_tensorflow = importlib.util.find_spec("tensorflow") is not None
        os.environ["KERAS_BACKEND"] = "tensorflow" if has_tensorflow else "jax"
    return os.environ["KERAS_BACKEND"]


def backend():
    import keras

    return keras.backend.backend()


def xla_modes():
    """`jit_compile` settings worth timing: TensorFlow runs graphs with or
    without XLA; JAX always compiles with XLA."""
    return (False, True) if backend() == "tensorflow" else (True,)


def mode_name(xla):
    if backend() == "jax":
        return "jax.jit (XLA)"
    return "XLA" if xla else "graph"


def compiled(function, xla):
    """`function` of arrays as a compiled function of the backend."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=xla)
    if backend() == "jax":
        import jax

        return jax.jit(function)
    raise ValueError(f"Benchmarks run on TensorFlow or JAX, not {backend()!r}.")


def with_gradients(objective, argnums):
    """A function returning `objective(*args)` and its gradients w.r.t. `args[i]`."""
    if backend() == "jax":
        import jax

        return jax.value_and_grad(objective, argnums=argnums)
    import tensorflow as tf

    def value_and_gradients(*args):
        with tf.GradientTape() as tape:
            for index in argnums:
                tape.watch(args[index])
            value = objective(*args)
        return value, tape.gradient(value, [args[index] for index in argnums])

    return value_and_gradients


def block(result):
    """Waits until every array in `result` is computed (asynchronous devices)."""
    import keras

    for leaf in keras.tree.flatten(result):
        if backend() == "jax":
            leaf.block_until_ready()
        else:
            leaf[(0,) * len(leaf.shape)].numpy()
    return result


def device_array(array):
    import keras

    return keras.ops.convert_to_tensor(array)
