"""Folders for tests of output errors."""

import contextlib
import os
import pathlib
import subprocess


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
