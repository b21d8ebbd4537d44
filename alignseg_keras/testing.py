"""Small, fast AlignSeg models and folder helpers for tests and quick experiments."""

import contextlib
import os
import pathlib
import subprocess

import keras

from alignseg_keras.models.alignseg import AlignSeg

TINY_CONFIG = dict(backbone="resnet18", decoder_channels=16, context_hidden_channels=32)


def tiny_alignseg(num_classes=3, seed=0, **kwargs):
    """A ResNet-18 AlignSeg with 16 decoder channels; builds and runs in seconds.

    Args:
        num_classes: int, number of classes.
        seed: int or None; with an int, `keras.utils.set_random_seed(seed)`
            first, so the weights are reproducible.
        **kwargs: any `AlignSeg` argument, overriding the tiny configuration.

    Example:
    ```python
    model = tiny_alignseg(num_classes=4)
    ```
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return AlignSeg(num_classes, **{**TINY_CONFIG, **kwargs})


@contextlib.contextmanager
def read_only_folder(path):
    """Yields `path`, a folder nobody can write to, for tests of output errors.

    As root (which ignores permissions) it is a read-only tmpfs mounted on
    `path`; otherwise a folder with mode 0o555. The test is skipped, with the
    reason, when root cannot mount.
    """
    import pytest

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
