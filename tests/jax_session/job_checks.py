"""One process of a two-process JAX job that checks what its processes agree on.

Usage: python job_checks.py ADDRESS NUM_PROCESSES PROCESS_ID BACKUP_DIR

Joins the job with the given options (`multiprocess.initialize`), compares the
backups each process sees in its BACKUP_DIR (`multiprocess.check_same_backups`,
as `alignseg train` does before loading one), and prints one JSON line: the
pipeline seed a `seed=None` pipeline takes in the job and the agreed seed, or
the `ValueError` the process stopped with. Run by tests/test_multiprocess_jax.py.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

from alignseg_keras import multiprocess  # noqa: E402
from alignseg_keras.callbacks import list_backups  # noqa: E402


def main(address, num_processes, process_id, backup_dir):
    try:
        multiprocess.initialize(address, int(num_processes), int(process_id))
        seeds = [multiprocess.pipeline_seed(None, lambda limit: -1), multiprocess.agreed_seed()]
        multiprocess.check_same_backups(list_backups(backup_dir), backup_dir)
    except ValueError as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        return
    print(json.dumps({"seeds": seeds}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
