"""Shared by every test session: each test starts from a clear Keras session.

Like Keras' own `TestCase.setUp`, which clears the session before each test:
models, traced functions and layer-name counters of earlier tests are released,
so that the memory of a long xdist worker stays bounded.
"""

import keras
import pytest


@pytest.fixture(autouse=True)
def clear_keras_session():
    yield
    keras.backend.clear_session()
