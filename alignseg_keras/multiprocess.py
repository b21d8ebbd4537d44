"""Data-parallel training across processes and hosts on the JAX backend.

A thin layer over the engine Keras ships, `keras.distribution` (JAX's
distributed runtime underneath); nothing here moves data or reduces gradients
itself:

1. `initialize()` joins the job: `keras.distribution.initialize()`, which calls
   `jax.distributed.initialize()` (the coordinator's address, the number of
   processes and this process's id, as arguments or from the
   `KERAS_DISTRIBUTION_*` variables) and agrees on one random seed.
2. `data_parallel()` sets `keras.distribution.DataParallel` over every device of
   every process: the weights are replicated, each global batch is split across
   all devices, and `fit`'s training step is one XLA program over the whole
   mesh, so gradients are averaged and BatchNorm statistics are computed over
   the global batch (tests/test_multiprocess_jax.py proves both).
3. `fit` is given the *global* `tf.data` pipeline, built identically in every
   process (same data, same seed). Keras' `Distribution.distribute_dataset`
   rebatches it to `global batch / number of processes` and keeps every
   `num_processes`-th sub-batch, so process `p` feeds rows
   `[p·b, (p+1)·b)` of every global batch (`b` = per-process batch): no example
   is duplicated or skipped. (Keras' JAX `fit` takes one batch from a first
   iterator before training from a second; every iterator of a repeated
   `training_pipeline` yields the same stream, flips included, so the
   processes agree on every row of every global batch.)
4. Only process 0 writes (`is_chief()`, `writer_callbacks()`); every process
   reads the same backups when resuming, and `assert_same_on_all_processes()`
   checks that they resumed from the same state. A model save is a
   computation of the whole job on JAX (it puts values onto the mesh, which
   JAX checks across processes): every process must save when process 0 does,
   the others into a scratch folder (`save_on_chief`,
   `callbacks_for_this_process`), or process 0 waits for them forever.

Example (every process runs the same program):
```python
import keras
from alignseg_keras import AlignSeg, data, multiprocess

job = multiprocess.initialize()              # KERAS_DISTRIBUTION_* variables, or arguments
multiprocess.data_parallel()                 # before building the model
train = data.training_pipeline(data.load_cityscapes(root, "train", shuffle_files=True, seed=0, repeat=True),
                               batch_size=16, seed=0)
model = AlignSeg(num_classes=19)
model.compile(total_steps=40000)
model.fit(train, epochs=40, steps_per_epoch=1000,
          callbacks=multiprocess.writer_callbacks([keras.callbacks.TensorBoard("logs")]))
multiprocess.save_on_chief(model, "model.keras")    # every process calls it
```
"""

import dataclasses
import os

ADDRESSES_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "KERAS_DISTRIBUTION_PROCESS_ID"
AUTO = "auto"

MULTI_WORKER_MIRRORED_MESSAGE = (
    "tf.distribute.MultiWorkerMirroredStrategy cannot train with Keras 3: `Model.fit` fails "
    "under it for any model (keras-team/keras#20585, open; its trainer reduces per-replica "
    "batches and scalar logs with collective ops that reject them). Train across machines on "
    "the JAX backend instead: KERAS_BACKEND=jax alignseg train --distribute data_parallel "
    "--coordinator-address HOST:PORT --num-processes N --process-id I (docs/training.md, "
    "'Several machines'). On one machine, --distribute mirrored (TensorFlow) works."
)


@dataclasses.dataclass(frozen=True)
class Job:
    """Where this process stands in a multi-process job.

    Attributes:
        coordinator_address: `"host:port"` of process 0, or None when JAX found
            the cluster itself (Cloud TPU, Slurm, Open MPI) or in one process.
        num_processes: int, processes in the job.
        process_id: int, this process, 0 .. num_processes - 1 (0 is the chief).
    """

    coordinator_address: object
    num_processes: int
    process_id: int

    @property
    def is_chief(self):
        return self.process_id == 0


def job_options(coordinator_address=None, num_processes=None, process_id=None, environ=None):
    """The job's options, from the arguments or else the `KERAS_DISTRIBUTION_*` variables.

    Returns None when nothing asks for a multi-process job (single process).
    `coordinator_address="auto"` (or the variable set to "auto") lets JAX find
    the cluster itself; otherwise the address (`host:port` of process 0, or a
    comma-separated list of every process's address, the first being process
    0's), the number of processes and the process id are all required.

    Returns:
        None or a dict with `job_addresses`, `num_processes`, `process_id` for
        `keras.distribution.initialize`.

    Raises:
        ValueError: an incomplete or inconsistent set of options.
    """
    environ = os.environ if environ is None else environ
    if coordinator_address is None:
        coordinator_address = environ.get(ADDRESSES_VARIABLE) or None
    if num_processes is None and environ.get(NUM_PROCESSES_VARIABLE):
        num_processes = _integer(environ[NUM_PROCESSES_VARIABLE], NUM_PROCESSES_VARIABLE)
    if process_id is None and environ.get(PROCESS_ID_VARIABLE):
        process_id = _integer(environ[PROCESS_ID_VARIABLE], PROCESS_ID_VARIABLE)
    if coordinator_address is None and num_processes is None and process_id is None:
        return None
    if coordinator_address == AUTO:
        if num_processes is not None or process_id is not None:
            raise ValueError(
                "coordinator address 'auto' lets JAX detect the cluster (Cloud TPU, Slurm, "
                "Open MPI): do not also give the number of processes or the process id."
            )
        return dict(job_addresses=None, num_processes=None, process_id=None)
    missing = [
        name
        for name, value in (
            (f"the coordinator address ({ADDRESSES_VARIABLE})", coordinator_address),
            (f"the number of processes ({NUM_PROCESSES_VARIABLE})", num_processes),
            (f"the process id ({PROCESS_ID_VARIABLE})", process_id),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            "A multi-process job needs the coordinator address, the number of processes and "
            f"this process's id; missing: {', '.join(missing)}. (Use the coordinator "
            "address 'auto' on Cloud TPU, Slurm or Open MPI, where JAX finds them itself.)"
        )
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"The process id must be in 0..{num_processes - 1} and the number of processes "
            f"positive; received process id {process_id} of {num_processes}."
        )
    addresses = [part.strip() for part in str(coordinator_address).split(",")]
    if len(addresses) > 1 and len(addresses) != num_processes:
        raise ValueError(
            f"{len(addresses)} job addresses were given for {num_processes} processes; give "
            "the coordinator's address alone, or one address per process."
        )
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"A job address must be HOST:PORT; received {address!r}.")
    return dict(job_addresses=",".join(addresses), num_processes=num_processes,
                process_id=process_id)


def _integer(text, name):
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer; received {text!r}.") from None


def _require_jax(what):
    import keras

    if keras.backend.backend() != "jax":
        raise ValueError(
            f"{what} runs on the JAX backend (KERAS_BACKEND=jax; the backend is "
            f"{keras.backend.backend()!r}). On TensorFlow, one machine's GPUs train with "
            "tf.distribute.MirroredStrategy; " + MULTI_WORKER_MIRRORED_MESSAGE
        )


def initialize(coordinator_address=None, num_processes=None, process_id=None):
    """Joins a multi-process job through `keras.distribution.initialize`.

    Call it in every process, first thing after importing Keras: before any
    JAX computation (building a model included). The options come from the
    arguments or else the `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID`
    variables (see `job_options`); with none of them this is a single-process
    job and nothing is initialised. Keras then agrees on one random seed
    across processes unless `keras.utils.set_random_seed` set one already.
    Processes wait for each other here (JAX's coordinator times out after a
    few minutes; so does a job where two processes were given the same id).
    Processes given a smaller process count than the coordinator's (JAX takes
    the coordinator's) raise a `JobDisagreementError` naming them; a coordinator
    given a larger count than there are processes waits for the missing ones
    until JAX's timeout.

    Returns:
        A `Job`.
    """
    options = job_options(coordinator_address, num_processes, process_id)
    if options is None:
        return Job(None, 1, 0)
    _require_jax("Multi-process training")
    import jax
    import keras

    keras.distribution.initialize(**options)
    if options["num_processes"] is not None:
        import numpy as np

        assert_same_on_all_processes(
            np.asarray([options["num_processes"]], np.int32),
            f"the number of processes (process {jax.process_index()} was given "
            f"{options['num_processes']}, the coordinator counts {jax.process_count()}): give "
            f"every process the same --num-processes ({NUM_PROCESSES_VARIABLE})",
        )
    coordinator = options["job_addresses"]
    return Job(coordinator.split(",")[0] if coordinator else None, jax.process_count(),
               jax.process_index())


def process_count():
    """Number of processes of the job (1 without one, and on TensorFlow)."""
    import keras

    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index():
    """This process's id in the job (0 without one, and on TensorFlow)."""
    import keras

    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def is_chief():
    """Whether this process writes checkpoints, logs and the final model (process 0)."""
    return process_index() == 0


def data_parallel(devices=None):
    """Sets `keras.distribution.DataParallel` over all devices of all processes.

    Call it after `initialize()` and before building the model (its variables
    are laid out when they are created). Each process must have the same number
    of devices.

    Args:
        devices: None (every device of the default type, GPUs or TPUs when
            present) or a list such as `keras.distribution.list_devices("gpu")`.

    Returns:
        The `keras.distribution.DataParallel`, now the global distribution.
    """
    _require_jax("keras.distribution.DataParallel")
    import keras

    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution


def check_global_batch_size(batch_size, distribution=None):
    """Raises a clear ValueError unless the global batch splits evenly over devices.

    Returns:
        The per-process batch size (what each process's pipeline shard yields).
    """
    import keras

    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return int(batch_size)
    devices = int(distribution.device_mesh.devices.size)
    processes = max(process_count(), 1)
    if batch_size % devices:
        raise ValueError(
            f"The global batch size {batch_size} must be a multiple of the number of devices "
            f"({devices} over {processes} process(es)): each device trains on an equal slice."
        )
    return batch_size // processes


def agreed_seed(seed=None):
    """A pipeline seed that is the same in every process.

    Every process builds the same global `tf.data` pipeline and keeps its own
    rows of each batch, so the order and augmentation must agree: a random
    per-process seed (e.g. `training_pipeline(seed=None)`) would duplicate some
    examples and skip others. Returns `seed` when given; otherwise the seed
    `keras.distribution.initialize` agreed on (or `keras.utils.set_random_seed`'s).
    """
    if seed is not None:
        return int(seed)
    from keras.src.utils import rng_utils

    global_seed = rng_utils.get_random_seed()
    if global_seed is None:
        if process_count() > 1:
            raise ValueError("No agreed seed: call multiprocess.initialize() first, or pass a seed.")
        return None
    return int(global_seed) % (2**31)


def in_a_job():
    """Whether this process joined a multi-process JAX job (`initialize`); asks without
    starting JAX's runtime (a job must be joined before any JAX computation)."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def pipeline_seed(seed, draw):
    """The seed of a data pipeline: `seed`; else, in a multi-process job, the seed its
    processes agreed on (`agreed_seed`: each process keeps its own rows of the same
    global stream; a seed drawn in each process duplicated some examples and skipped
    others, without a word); else `draw(2**31)`."""
    if seed is not None:
        return int(seed)
    return agreed_seed() if in_a_job() else draw(2**31)


def writer_callbacks(callbacks):
    """The callbacks this process runs: all of them on process 0, none elsewhere.

    For callbacks that only write logs of numbers (TensorBoard, CSV logs); pass
    them through this and add the ones every process needs (stopping rules,
    the backup's restore) unfiltered. Not for model checkpoints: a save on
    process 0 alone waits for the others forever on JAX (see `save_on_chief`;
    `callbacks_for_this_process` sends the other processes' saves to a scratch
    folder).
    """
    return list(callbacks) if is_chief() else []


class JobDisagreementError(ValueError):
    """The processes of a job were started on different options or files (a ValueError:
    `alignseg train` reports it as a wrong command, in one line)."""


def assert_same_on_all_processes(value, what, show_values=True):
    """Raises `JobDisagreementError` unless `value` (a number, or arrays) is equal in every process.

    Uses `jax.experimental.multihost_utils.assert_equal`; a no-op in one process.
    The message names `what`, then (`show_values`) the values seen, which a digest
    would only clutter.
    """
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils

    try:
        multihost_utils.assert_equal(value, fail_message="")
    except AssertionError as error:
        values = f" ({str(error).strip()})" if show_values else ""
        raise JobDisagreementError(f"The processes of the job disagree on {what}{values}.") from None


def raise_if_chief_refused(refusal):
    """Stops every process of the job when process 0 could not start.

    `refusal` is process 0's error (e.g. the `ValueError` of
    `atomic.single_writer`: another run writes the output folder), or None; in
    the other processes it is ignored. Process 0 raises its own error; every
    other process raises a `ValueError` pointing at it. Without this, process 0
    ends and the others fail in their first collective after JAX's timeout
    (30 s), with a `JaxRuntimeError` about a Gloo context. Every process of the job
    must call it at the same point. In one process it raises `refusal`, if any.
    """
    if process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
        if not is_chief():
            refusal = None if not int(refused) else ValueError(
                f"Process 0 of the job refused to start (its message says why, e.g. another "
                f"run writes the output folder); process {process_index()} stops too."
            )
    if refusal is not None:
        raise refusal


def weights_fingerprint(model):
    """A SHA-256 of every variable's value, as 8 int32: equal in every process of a healthy job."""
    import hashlib

    import numpy as np

    import keras

    digest = hashlib.sha256()
    for variable in model.variables:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(variable.path.encode())
        digest.update(value.tobytes())
    return np.frombuffer(digest.digest(), dtype=np.int32).copy()


# `alignseg train --distribute data_parallel`: the job options and what differs per process.

WRITER_CALLBACKS = ("CSVLogger", "AtomicModelCheckpoint", "TensorBoard", "ModelCheckpoint")
# Writers of numbers only: left out on processes other than 0 (the model savers run
# everywhere, see `callbacks_for_this_process`).
LOG_CALLBACKS = ("CSVLogger", "TensorBoard")


def add_job_arguments(parser):
    """Adds --coordinator-address, --num-processes and --process-id to an argparse parser."""
    parser.add_argument(
        "--coordinator-address", default=None, metavar="HOST:PORT",
        help="with --distribute data_parallel: process 0's address, to train with several "
        "processes (hosts); 'auto' on Cloud TPU, Slurm or Open MPI. Default: "
        f"${ADDRESSES_VARIABLE}, else one process.")
    parser.add_argument("--num-processes", type=int, default=None,
                        help=f"processes in the job (default: ${NUM_PROCESSES_VARIABLE})")
    parser.add_argument("--process-id", type=int, default=None,
                        help=f"this process, 0..N-1; 0 writes the outputs (default: ${PROCESS_ID_VARIABLE})")


def check_job_arguments(args):
    """Raises ValueError for job options that cannot start a job: given without
    `--distribute data_parallel`, that option on another backend than JAX, or
    options incomplete or out of range (`job_options`).
    Reads no more than the arguments and the environment, so a command can check
    them before it makes anything."""
    if getattr(args, "distribute", None) != "data_parallel":
        given = [flag for flag, value in (("--coordinator-address", args.coordinator_address),
                                          ("--num-processes", args.num_processes),
                                          ("--process-id", args.process_id)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --distribute data_parallel (JAX).")
        return
    _require_jax("--distribute data_parallel")
    job_options(args.coordinator_address, args.num_processes, args.process_id)


def start_data_parallel(args):
    """Joins the job the options describe, sets DataParallel; returns the distribution.

    Raises ValueError for job options that cannot start one (`check_job_arguments`).
    """
    check_job_arguments(args)
    if getattr(args, "distribute", None) != "data_parallel":
        return None
    initialize(args.coordinator_address, args.num_processes, args.process_id)
    distribution = data_parallel()
    check_global_batch_size(args.batch_size, distribution)
    return distribution


def scratch_folder():
    """A folder of this process's own for the saves it makes but does not keep: removed
    at exit, and by a later process if this one is killed (`atomic.held_scratch_folder`)."""
    global _SCRATCH
    if _SCRATCH is None:
        from alignseg_keras.atomic import held_scratch_folder

        _SCRATCH = held_scratch_folder(SCRATCH_PREFIX)
    return _SCRATCH


# The scratch folders' names, in the system's temporary folder, begin with this.
SCRATCH_PREFIX = "alignseg-process-"


_SCRATCH = None


def save_on_chief(model, path, save=None):
    """Saves `model` to `path` on process 0; every other process saves it too, but
    into its scratch folder, and deletes it.

    Every process must take part: on the JAX backend `model.save` puts values
    onto the job's mesh (each `jax.device_put` onto it checks across processes
    that every process passes the same value), so a save on process 0 alone
    waits for the others forever (or fails when they do something else).

    Args:
        model: the model.
        path: where process 0 writes it (a ".keras" file).
        save: `save(model, path)`, by default `alignseg_keras.callbacks.save_model`
            (atomic).
    """
    if save is None:
        from alignseg_keras.callbacks import save_model as save
    if is_chief():
        save(model, path)
        return
    elsewhere = os.path.join(scratch_folder(), os.path.basename(path))
    save(model, elsewhere)
    os.remove(elsewhere)


def _save_backup_elsewhere(backup):
    """ResumableBackup's save on processes other than 0: the same checks and save, not kept."""
    from alignseg_keras.callbacks import check_finite_state

    check_finite_state(backup.model)
    save_on_chief(backup.model, os.path.join(backup.backup_dir, "backup.keras"))


def callbacks_for_this_process(callbacks):
    """`callbacks` on process 0; elsewhere without the log writers, and the savers
    writing to a scratch folder.

    Every process restores from the same backups (shared storage); only
    process 0 writes backups, checkpoints, CSV and TensorBoard logs, and moves
    unusable backups aside (the others skip them as it does). The other
    processes still make every save (see `save_on_chief`: a save is a
    computation of the whole job), into their scratch folder, and delete it.
    CSV and TensorBoard logs (numbers `fit` has already fetched) run on
    process 0 only.
    """
    if is_chief():
        return list(callbacks)
    kept = []
    for callback in callbacks:
        name = type(callback).__name__
        if name in LOG_CALLBACKS:
            continue
        if name == "AtomicModelCheckpoint":
            callback.path = os.path.join(scratch_folder(), os.path.basename(callback.path))
        elif name == "ModelCheckpoint":
            callback.filepath = os.path.join(scratch_folder(), os.path.basename(callback.filepath))
        elif hasattr(callback, "_save_model"):  # ResumableBackup: restores, saves elsewhere
            callback._save_model = lambda callback=callback: _save_backup_elsewhere(callback)
            callback.discard = lambda: None
            # Skips an unusable backup as process 0 does, leaving the move to it.
            callback._move_aside = lambda path, label, reason: None
        kept.append(callback)
    return kept


def check_same_backups(backups, backup_dir):
    """Raises unless every process sees the same backups to resume from.

    `backups` are `ResumableBackup.backups()`'s `(epochs done, path)` pairs.
    On JAX, loading a backup is a computation of the whole job (each variable
    put onto the mesh is checked across processes): a process that saw no
    backup in its `--output-dir` (a local disk rather than shared storage) left
    the others waiting inside the load for ever, before `check_same_start`
    could tell. Compared by the files' names and sizes; a no-op in one process.
    """
    import hashlib

    import numpy as np

    listing = "\n".join(f"{epoch} {os.path.basename(path)} {_file_size(path)}"
                        for epoch, path in backups)
    digest = hashlib.sha256(listing.encode()).digest()[:16]
    assert_same_on_all_processes(
        np.frombuffer(digest, np.int32).copy(),
        f"the backups to resume from (process {process_index()} sees {len(backups)} in "
        f"{backup_dir}): every process must read the same --output-dir, on shared storage",
        show_values=False,
    )


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def check_same_start(model):
    """Raises unless every process starts (or resumes) from the same weights and step."""
    import numpy as np

    from alignseg_keras.optimizers import optimizer_step

    step = optimizer_step(model)
    assert_same_on_all_processes(
        np.concatenate([weights_fingerprint(model), np.asarray([step], np.int32)]),
        "the weights and step to start from (do all processes read the same backup, on shared "
        "storage?)",
    )
