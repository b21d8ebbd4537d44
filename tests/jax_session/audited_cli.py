"""Runs the `alignseg` command line, recording what this process writes in a folder.

    python audited_cli.py RECORD.json FOLDER train --output-dir FOLDER ...

is `alignseg train --output-dir FOLDER ...` (`alignseg_keras.cli.main`, what the
console script and `python -m alignseg_keras.cli` run), with a Python audit hook
(PEP 578) that notes every file this process opens for writing, renames onto,
removes or creates under FOLDER. On exit it writes `{"exit": status, "pid": ...,
"writes": [[event, path], ...]}` to RECORD.json (outside FOLDER).
tests/test_multiprocess_jax.py checks with it that only process 0 of a job
writes the checkpoints, logs and final model.

Not seen: files written by native code (TensorFlow's TensorBoard writer; the
test tells those apart by the process id in their names). The probe of
`prepare_output_dir` (an unnamed O_TMPFILE in FOLDER itself) is not noted.
"""

import json
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _path(value):
    if isinstance(value, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(value))
        return os.path.abspath(path)
    return None  # a file descriptor


def recorder(folder):
    """An audit hook noting writes under `folder`, and the list it appends `[event, path]` to."""
    folder = os.path.abspath(folder)
    writes = []

    def inside(path):
        return path is not None and path != folder and path.startswith(folder + os.sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = _path(args[0]), args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                (flags or 0) & WRITE_FLAGS)
            if writing and inside(path):
                writes.append(["open", path])
        elif event == "os.rename":  # os.rename and os.replace
            if inside(_path(args[1])):
                writes.append([event, _path(args[1])])
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
            if inside(_path(args[0])):
                writes.append([event, _path(args[0])])
        elif event == "os.mkdir":
            path = _path(args[0])
            if inside(path) and not os.path.isdir(path):
                writes.append([event, path])

    return hook, writes


def main(argv):
    record, folder, command = argv[0], argv[1], argv[2:]
    hook, writes = recorder(folder)
    sys.addaudithook(hook)
    from alignseg_keras.cli import main as alignseg

    status = 1
    try:
        status = alignseg(command)
    finally:
        with open(record, "w") as handle:
            json.dump({"exit": status, "pid": os.getpid(), "writes": writes}, handle)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
