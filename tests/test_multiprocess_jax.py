"""Two JAX processes train one AlignSeg data-parallel, as one process would.

The processes run on 127.0.0.1 on the CPU (JAX's CPU collectives, gloo), two
virtual CPU devices each, joined through `alignseg_keras.multiprocess` (that
is, `keras.distribution.initialize` and `DataParallel` over the 4 devices).
The job's `fit` trains on `training_pipeline` itself; a third process trains
the same tiny AlignSeg on one device on the pipeline's first global batches,
recorded as arrays and replayed. Then:

- each process was fed its own rows of every global batch by Keras'
  `distribute_dataset` (process p: rows [2p, 2p + 2)): none duplicated or skipped,
  in a first and a second iterator of the pipeline alike (`fit` peeks with one
  and trains from the other), flips included;
- the two processes' weights are identical, and after 3 steps of `fit` with
  `AlignSeg.compile()`'s optimizer (SGD, momentum, weight decay, poly schedule)
  and the deep-supervision loss equal the single process's weights and
  BatchNorm moving statistics to float32 rounding (see TOLERANCE);
- a lone BatchNormalization trained one step on a global batch whose process
  halves have means 0 and 10 has the moving variance of the global batch
  (about 25), not that of a process's half or a device's row (about 1 and 0):
  the statistics span the global batch;
- `alignseg train` itself runs as a two-process job; killed whole (SIGKILL) once
  its first backup is written, the same command resumes the job from that
  backup and ends with the model of all 4 steps, and only process 0 writes.

Every process is spawned here with KERAS_BACKEND=jax (so the test runs in the
TensorFlow session of `make test`), on a free port, with a time limit; all are
killed and reaped whatever happens (tests/jax_session/processes.py). Worker:
tests/jax_session/multiprocess_worker.py.
"""

import csv
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from jax_session.processes import Job
from jax_session.processes import environment
from jax_session.processes import run_processes
from jax_session.processes import with_free_port

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="needs jax (pip install jax)"
)

WORKER = Path(__file__).parent / "jax_session" / "multiprocess_worker.py"
AUDITED_CLI = Path(__file__).parent / "jax_session" / "audited_cli.py"
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
PER_PROCESS_BATCH = 2  # global batch 4 over 2 processes
# Seconds for the whole job; it takes about a minute on 2 idle cores, and
# three to four minutes when the cores are shared with other tests.
TIME_LIMIT = 420
# Float32 rounding: one device and four sum in different orders, and 3 steps
# amplify it by an amount that depends on the batches. Each variable may differ
# by 2048 ulps of its largest magnitude (2**-12 relative); measured on the
# pipeline's batches: at most 572 ulps (BatchNorm moving statistics), the median
# variable by 1.3 % of its update. The same job trained on the recorded batches
# replayed from arrays ends with bit-identical weights to the job trained on
# the pipeline itself, so that is rounding, not other data. The worker's
# learning rate keeps the steps where rounding is not amplified further (see
# LEARNING_RATE there).
TOLERANCE = 2.0**-12
# A bug that changed the updates (loss scaled per device, per-device statistics,
# other batches or flips) moves most variables by about as much as their update
# (measured when the flips differed); rounding moves the median variable by
# about 1.3 % of it.
UPDATE_TOLERANCE = 5e-2


def last_json(output):
    return json.loads(output.strip().splitlines()[-1])


def close(actual, expected, what):
    scale = float(np.abs(expected).max())
    difference = float(np.abs(np.asarray(actual, "float64") - expected).max())
    assert difference <= TOLERANCE * scale, f"{what}: differs by {difference} (scale {scale})"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multiprocess")
    python = sys.executable

    def start(address):
        commands = [
            (f"process-{index}", [python, str(WORKER), "worker", str(directory)],
             environment(DEVICES_PER_PROCESS,
                         KERAS_DISTRIBUTION_JOB_ADDRESSES=address,
                         KERAS_DISTRIBUTION_NUM_PROCESSES=str(NUM_PROCESSES),
                         KERAS_DISTRIBUTION_PROCESS_ID=str(index)))
            for index in range(NUM_PROCESSES)
        ]
        commands.append(("reference", [python, str(WORKER), "reference", str(directory)],
                         environment(1)))
        return run_processes(commands, str(directory), TIME_LIMIT, cwd=str(WORKER.parent))

    outputs = with_free_port(start)
    results = {name: last_json(output) for name, output in outputs.items()}
    arrays = {name: dict(np.load(directory / f"{name}.npz")) for name in outputs}
    return results, arrays


def test_each_process_joined_with_its_own_devices(job):
    results, _ = job
    for index in range(NUM_PROCESSES):
        result = results[f"process-{index}"]
        assert result["process_id"] == index
        assert result["num_processes"] == NUM_PROCESSES
        assert result["is_chief"] == (index == 0)
        assert result["local_devices"] == DEVICES_PER_PROCESS
        assert result["global_devices"] == NUM_PROCESSES * DEVICES_PER_PROCESS
        assert len(result["mesh"]) == NUM_PROCESSES * DEVICES_PER_PROCESS
        assert result["per_process_batch"] == PER_PROCESS_BATCH
    assert results["reference"]["devices"] == 1


def test_each_process_reads_its_own_rows_of_every_global_batch(job):
    _, arrays = job
    reference = arrays["reference"]
    rows = []
    for index in range(NUM_PROCESSES):
        shard = arrays[f"process-{index}"]
        part = slice(index * PER_PROCESS_BATCH, (index + 1) * PER_PROCESS_BATCH)
        np.testing.assert_array_equal(shard["shard_images"], reference["global_images"][:, part])
        np.testing.assert_array_equal(shard["shard_masks"], reference["global_masks"][:, part])
        rows.append(shard["shard_images"])
    # Together the shards are the global batches: no example twice, none left out.
    np.testing.assert_array_equal(np.concatenate(rows, axis=1), reference["global_images"])
    assert len({row.tobytes() for step in reference["global_images"] for row in step}) == (
        reference["global_images"].shape[0] * reference["global_images"].shape[1]
    )


def test_fit_feeds_each_process_its_rows_of_the_reference_batches(job):
    """A second iterator of the pipeline (the one `fit` trains from) yields the
    reference's global batches too, split by process; so does each process's own
    pipeline. (That `fit` trained on them: the weights test below.)"""
    _, arrays = job
    reference = arrays["reference"]
    for index in range(NUM_PROCESSES):
        shard = arrays[f"process-{index}"]
        np.testing.assert_array_equal(shard["global_images"], reference["global_images"])
        np.testing.assert_array_equal(shard["global_masks"], reference["global_masks"])
        part = slice(index * PER_PROCESS_BATCH, (index + 1) * PER_PROCESS_BATCH)
        np.testing.assert_array_equal(shard["fit_images"], reference["global_images"][:, part])
        np.testing.assert_array_equal(shard["fit_masks"], reference["global_masks"][:, part])
        initial = [name for name in reference if name.startswith("initial/")]
        assert initial
        for name in initial:
            np.testing.assert_array_equal(shard[name], reference[name], err_msg=name)


def weight_names(arrays):
    names = sorted(name for name in arrays["reference"] if name.startswith("weight/"))
    assert any("moving_mean" in name for name in names)
    assert any("moving_variance" in name for name in names)
    return names


def test_processes_end_with_identical_weights(job):
    _, arrays = job
    names = weight_names(arrays)
    first = arrays["process-0"]
    for index in range(1, NUM_PROCESSES):
        other = arrays[f"process-{index}"]
        assert sorted(name for name in other if name.startswith("weight/")) == names
        for name in names:
            np.testing.assert_array_equal(other[name], first[name], err_msg=name)


def test_weights_equal_those_of_one_process_on_the_same_global_batches(job):
    results, arrays = job
    reference = arrays["reference"]
    names = weight_names(arrays)
    first = arrays["process-0"]
    relative = []
    for name in names:
        close(first[name], reference[name], name)
        update = float(np.abs(reference[name] - reference["initial/" + name[len("weight/"):]]).max())
        if update > 0:
            relative.append(float(np.abs(first[name] - reference[name]).max()) / update)
    # Training moved (nearly) every variable: a no-op would also "agree".
    assert len(relative) >= 0.9 * len(names), f"{len(relative)} of {len(names)} moved"
    # Not only within rounding of each variable: small against what the steps did.
    assert np.median(relative) <= UPDATE_TOLERANCE, f"median difference / update {np.median(relative)}"
    moving = [name for name in names if "moving_variance" in name]
    assert all(np.abs(reference[name] - 1.0).max() > 1e-3 for name in moving[:3])
    close(results["process-0"]["losses"], np.asarray(results["reference"]["losses"]), "losses")


def test_batchnorm_statistics_span_the_global_batch(job):
    _, arrays = job
    batch = arrays["reference"]["probe"]
    global_mean, global_variance = batch.mean(axis=0), batch.var(axis=0)
    halves = batch.reshape(NUM_PROCESSES, PER_PROCESS_BATCH, -1)
    process_variance = halves.var(axis=1).mean(axis=0)
    assert np.all(global_variance > 10 * process_variance)  # the probe tells them apart
    for index in range(NUM_PROCESSES):
        shard = arrays[f"process-{index}"]
        np.testing.assert_allclose(shard["probe_moving_mean"], global_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(shard["probe_moving_variance"], global_variance, rtol=1e-4)


# `alignseg train` as a two-process job: the command line itself, on the JAX
# backend, one CPU device per process, the synthetic data, a tiny model.

CLI_TINY = [
    "--dataset", "synthetic", "--synthetic-images", "8", "--synthetic-size", "64", "64",
    "--backbone", "resnet18", "--decoder-channels", "8", "--context-hidden-channels", "16",
    "--crop-size", "64", "64", "--batch-size", "2", "--checkpoint-every", "2",
]
# Seconds for one run of the job: most of it is building the model (every
# variable is put onto the mesh, with a check across processes) and compiling the
# training step; about 8 minutes when the 2 cores are shared with other tests.
CLI_TIME_LIMIT = 600
# Seconds for a job that stops at its start (about 20 s on idle cores).
REFUSAL_TIME_LIMIT = 240


def alignseg_train_job(output, address, steps, records=None):
    """`alignseg train` for each process of the job: `python -m alignseg_keras.cli`, or
    with `records` (a folder) under tests/jax_session/audited_cli.py, which runs the
    same `main` and notes what the process writes in `output`."""
    commands = []
    for index in range(NUM_PROCESSES):
        arguments = [
            "train", *CLI_TINY, "--steps", str(steps), "--output-dir", str(output),
            "--distribute", "data_parallel", "--coordinator-address", address,
            "--num-processes", str(NUM_PROCESSES), "--process-id", str(index),
        ]
        if records is None:
            argv = [sys.executable, "-m", "alignseg_keras.cli", *arguments]
        else:
            record = os.path.join(records, f"writes-{index}.json")
            argv = [sys.executable, str(AUDITED_CLI), record, str(output), *arguments]
        commands.append((f"alignseg-{index}", argv, environment(1)))
    return commands


def epochs_in_history(output):
    """The epochs of history.csv's rows (CSVLogger, process 0), in file order."""
    path = os.path.join(output, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return [int(row["epoch"]) for row in rows if (row.get("epoch") or "").isdigit()]


def load_final_model(output):
    import alignseg_keras  # noqa: F401  (registers AlignSeg's classes for loading)

    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    return model, int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _job_until(output, directory, address, records, until=None):
    """Runs the job of `alignseg_train_job` (4 steps) until it ends, or until `until()`
    holds, when every process is killed (SIGKILL). Returns (outputs, pids)."""
    commands = alignseg_train_job(output, address, steps=4, records=str(records))
    with Job(commands, str(directory), cwd=str(directory)) as job:
        outputs = job.wait(CLI_TIME_LIMIT, until=until)
        pids = {name: process.pid for name, process in job.processes.items()}
    return outputs, pids


@pytest.fixture(scope="module")
def alignseg_train(tmp_path_factory):
    """The two-process `alignseg train` job (4 steps, a backup every 2), killed whole
    once its first backup is on disk and run again with the same command to its end.

    Returns the run folder, the second run's outputs, its audit records, and the
    process ids of process 0 in both runs.
    """
    directory = tmp_path_factory.mktemp("alignseg-train")
    output = directory / "run"
    first_backup = output / "backup" / "epoch-0001.keras"
    (directory / "killed").mkdir()
    (directory / "resumed").mkdir()

    def killed(address):
        return _job_until(output, directory, address, directory / "killed",
                          until=first_backup.exists)

    def resumed(address):
        return _job_until(output, directory, address, directory / "resumed")

    _, killed_pids = with_free_port(killed)
    outputs, resumed_pids = with_free_port(resumed)
    records = []
    for index in range(NUM_PROCESSES):
        with open(directory / "resumed" / f"writes-{index}.json") as handle:
            records.append(json.load(handle))
    chief_pids = [killed_pids["alignseg-0"], resumed_pids["alignseg-0"]]
    return output, outputs, records, chief_pids


def test_alignseg_train_job_resumes_after_a_kill_and_its_model_loads(alignseg_train):
    output, outputs, records, _ = alignseg_train
    assert [record["exit"] for record in records] == [0] * NUM_PROCESSES
    # The second run took up the first backup: 2 of 4 steps done.
    assert "epoch-0001.keras: 2 of 4 steps done." in outputs["alignseg-0"], (
        outputs["alignseg-0"][-3000:])
    model, steps = load_final_model(output)
    assert steps == 4
    from alignseg_keras.data import SYNTHETIC_CLASSES

    logits = model.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0)
    assert logits.shape == (1, 64, 64, len(SYNTHETIC_CLASSES))
    assert np.isfinite(logits).all()
    assert epochs_in_history(output)[-1] == 1
    assert not (output / "backup").exists()  # discarded once the model was saved
    assert "Saved the trained model" in outputs["alignseg-0"]
    assert "Saved the trained model" not in outputs["alignseg-1"]


def test_only_process_0_of_the_job_writes(alignseg_train):
    output, _, records, chief_pids = alignseg_train
    written = {os.path.relpath(path, output) for _, path in records[0]["writes"]}
    # The audit sees the writes (else an empty record of process 1 would prove nothing).
    assert {"model.keras", "checkpoint.keras", "history.csv",
            os.path.join("backup", "epoch-0002.keras")} <= written, sorted(written)
    assert records[1]["writes"] == []
    # TensorBoard's native writer names its files after the writing process:
    # process 0 of the killed run, then of the resumed one.
    events = [name for _, _, names in os.walk(output / "logs") for name in names
              if name.startswith("events.out.tfevents.")]
    assert events
    assert all(any(f".{pid}." in name for pid in chief_pids) for name in events), events


def test_a_job_whose_process_0_cannot_hold_the_output_folder_stops_whole(tmp_path):
    # Another run holds the folder: process 0 is refused, and process 1 must not wait
    # for it in a collective until JAX's timeouts.
    from alignseg_keras.atomic import single_writer

    output = tmp_path / "run"
    output.mkdir()

    def start(address):
        commands = alignseg_train_job(output, address, steps=4)
        with Job(commands, str(tmp_path), cwd=str(tmp_path)) as job:
            deadline = time.monotonic() + REFUSAL_TIME_LIMIT
            while None in job.returncodes().values() and time.monotonic() < deadline:
                time.sleep(0.2)
            return job.returncodes(), job.outputs()

    with single_writer(str(output), "alignseg train"):
        codes, outputs = with_free_port(start)
    assert codes == {"alignseg-0": 2, "alignseg-1": 2}, outputs
    assert f"{output} is in use by another alignseg train (process {os.getpid()})" in (
        outputs["alignseg-0"])
    assert "Process 0 of the job refused to start" in outputs["alignseg-1"]
    assert sorted(os.listdir(output)) == [".writer.lock"]  # nothing written


JOB_CHECKS = Path(__file__).parent / "jax_session" / "job_checks.py"


def job_checks(tmp_path, folders, counts):
    """tests/jax_session/job_checks.py in two processes, given `folders[i]` and
    `counts[i]` processes; returns their JSON lines."""
    def start(address):
        commands = [
            (f"checks-{index}", [sys.executable, str(JOB_CHECKS), address, str(counts[index]),
                                 str(index), str(folders[index])], environment(1))
            for index in range(NUM_PROCESSES)
        ]
        return run_processes(commands, str(tmp_path), REFUSAL_TIME_LIMIT)

    outputs = with_free_port(start)
    return [last_json(outputs[f"checks-{index}"]) for index in range(NUM_PROCESSES)]


def test_processes_that_see_other_backups_stop_before_loading_one(tmp_path):
    # Process 1 given a folder of its own (a local disk): process 0 loaded the backup, a
    # computation of the whole job on JAX, and both waited in it for ever.
    shared, local = tmp_path / "shared" / "backup", tmp_path / "local" / "backup"
    shared.mkdir(parents=True)
    (shared / "epoch-0001.keras").write_bytes(b"a backup")
    results = job_checks(tmp_path, [shared, local], [NUM_PROCESSES] * NUM_PROCESSES)
    for index, result in enumerate(results):
        assert result["error"].startswith(
            "JobDisagreementError: The processes of the job disagree on the backups to resume "
            f"from (process {index} sees {1 - index} in "), result
    # The same backups everywhere: no error; a seed=None pipeline takes the job's seed.
    results = job_checks(tmp_path, [shared, shared], [NUM_PROCESSES] * NUM_PROCESSES)
    assert results[0] == results[1] and "seeds" in results[0], results
    pipeline, agreed = results[0]["seeds"]
    assert pipeline == agreed and pipeline >= 0


def test_processes_given_other_process_counts_stop_with_a_clear_error(tmp_path):
    # JAX takes the coordinator's count: process 1's "3" went unnoticed.
    results = job_checks(tmp_path, [tmp_path, tmp_path], [NUM_PROCESSES, 3])
    for result in results:
        assert "disagree on the number of processes" in result["error"], results
        assert "give every process the same --num-processes" in result["error"], results
