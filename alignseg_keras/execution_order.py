"""Execution order on TensorFlow's graph executor, where memory depends on it.

TensorFlow runs the ops of a graph (`tf.function`, `model.fit`) as soon as their
inputs exist, and ops that are ready together may all run before any of their
results is used. Where a computation is a sum of independent large terms (the
four taps of a bilinear sample, the update of every variable by an optimizer),
all the terms can then be alive at once: memory that a program-order run would
never hold. XLA (the JAX backend, `jit_compile=True`) orders its schedule for
memory itself, and PyTorch and TensorFlow's eager mode run in program order;
Keras has no op that states an order, so `computed_after` adds a TensorFlow
control dependency on the TensorFlow backend and does nothing on the others.
"""

import keras


def computed_after(anchor, *tensors):
    """`tensors`, unchanged, that TensorFlow's graph executor provides only once
    `anchor` has been computed; whatever is computed from them waits for it.

    On other backends, and in TensorFlow's eager mode (where control
    dependencies have no effect), the tensors are returned as they are.

    Args:
        anchor: a tensor that must exist first.
        *tensors: tensors to hold back until then.

    Returns:
        A tuple of the tensors, in order.

    Example:
    ```python
    (second_index,) = computed_after(first_term, second_index)
    second_term = ops.take(table, second_index, axis=0)
    ```
    """
    if keras.backend.backend() != "tensorflow":
        return tensors
    import tensorflow as tf

    with tf.control_dependencies([anchor]):
        return tuple(tf.identity(tensor) for tensor in tensors)
