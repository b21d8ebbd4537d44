"""When TensorFlow's fused resize kernel is used, and that XLA graphs avoid it."""

import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.fused_resize import xla_compiles_this_graph
from alignseg_keras.layers.alignment import resize_bilinear
from alignseg_keras.layers.alignment import separable_resize_bilinear


def test_xla_compiles_this_graph_tells_jit_compiled_functions():
    seen = []

    def record(x):
        seen.append(xla_compiles_this_graph())
        return x

    tf.function(record)(tf.ones(1))
    tf.function(record, jit_compile=True)(tf.ones(1))
    tf.function(lambda x: tf.function(record)(x), jit_compile=True)(tf.ones(1))
    tf.function(lambda x: tf.function(record, jit_compile=True)(x))(tf.ones(1))
    assert seen == [False, True, True, True]
    assert not xla_compiles_this_graph()  # eager


# Sizes where XLA's lowering of ResizeBilinear was wrong (TensorFlow 2.21, CPU).
@pytest.mark.parametrize("align_corners,in_size,out_size", [
    (True, (4, 5), (16, 20)), (False, (5, 7), (9, 11)), (True, (16, 20), (64, 80)),
])
def test_xla_resize_equals_graph_resize(align_corners, in_size, out_size):
    images = tf.random.stateless_normal((2, *in_size, 3), seed=(1, 2))

    def resize(x):
        return resize_bilinear(x, out_size, align_corners)

    graph = tf.function(resize)(images).numpy()
    xla = tf.function(resize, jit_compile=True)(images).numpy()
    expected = separable_resize_bilinear(images, out_size, align_corners).numpy()
    np.testing.assert_allclose(graph, expected, atol=1e-5)
    np.testing.assert_allclose(xla, expected, atol=1e-5)
