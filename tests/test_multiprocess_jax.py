"""Two JAX processes train one AlignSeg data-parallel, as one process would.

The processes run on 127.0.0.1 on the CPU (JAX's CPU collectives, gloo), two
virtual CPU devices each, joined through `alignseg_keras.multiprocess` (that
is, `keras.distribution.initialize` and `DataParallel` over the 4 devices).
A third process trains the same tiny AlignSeg on one device on the same global
batches. Then:

- each process was fed its own rows of every global batch by Keras'
  `distribute_dataset` (process p: rows [2p, 2p + 2)): none duplicated or skipped,
  both for `training_pipeline` and for the replayed batches `fit` trains on;
- the two processes' weights are identical, and after 3 steps of `fit` with
  `AlignSeg.compile()`'s optimizer (SGD, momentum, weight decay, poly schedule)
  and the deep-supervision loss equal the single process's weights and
  BatchNorm moving statistics to float32 rounding (see TOLERANCE);
- a lone BatchNormalization trained one step on a global batch whose process
  halves have means 0 and 10 has the moving variance of the global batch
  (about 25), not that of a process's half or a device's row (about 1 and 0):
  the statistics span the global batch.

Every process is spawned here with KERAS_BACKEND=jax (so the test runs in the
TensorFlow session of `make test`), on a free port, with a time limit; all are
killed and reaped whatever happens. Worker: tests/jax_session/multiprocess_worker.py.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="needs jax (pip install jax)"
)

WORKER = Path(__file__).parent / "jax_session" / "multiprocess_worker.py"
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
PER_PROCESS_BATCH = 2  # global batch 4 over 2 processes
TIME_LIMIT = 240  # seconds for the whole job; it takes about a minute on 2 idle cores
# Float32 rounding: one device and four sum in different orders. Each variable
# may differ by 256 ulps of its largest magnitude (2**-15 relative; measured: at
# most ~35 ulps, in BatchNorm moving statistics), while the 3 steps move the
# median variable by thousands of ulps. The worker's learning rate keeps the
# steps in the regime where rounding is not amplified (see LEARNING_RATE there).
TOLERANCE = 2.0**-15
# A bug that changed the updates (loss scaled per device, per-device statistics,
# other batches) would move most variables by far more than 1 % of their update;
# rounding moves the median variable by about 0.02 % of it.
UPDATE_TOLERANCE = 1e-2


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(devices, **variables):
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("KERAS_DISTRIBUTION_", "XLA_FLAGS", "JAX_", "TF_CONFIG"))
    }
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        # LLVM optimisation off: a tenth of the compile time of the ~80 small
        # programs that initialise the weights, for slower but few steps.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        **variables,
    )
    return env


def run_processes(commands, directory, time_limit):
    """Runs `(name, argv, env)` commands at once; returns {name: stdout}.

    A process that fails ends all the others at once (a process waiting for
    a dead peer would otherwise block until JAX's own timeout); every process
    is killed, with its children, and reaped on the way out.
    """
    processes = {}
    logs = {}
    try:
        for name, argv, env in commands:
            logs[name] = open(directory / f"{name}.log", "w+")
            processes[name] = subprocess.Popen(
                argv, env=env, stdout=logs[name], stderr=subprocess.STDOUT, cwd=WORKER.parent,
                start_new_session=True,
            )
        deadline = time.monotonic() + time_limit
        while True:
            codes = {name: process.poll() for name, process in processes.items()}
            failed = [name for name, code in codes.items() if code not in (None, 0)]
            if failed or all(code == 0 for code in codes.values()):
                break
            if time.monotonic() > deadline:
                failed = ["timeout"]
                break
            time.sleep(0.2)
    finally:
        for process in processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in processes.values():
            process.wait(timeout=30)
        outputs = {}
        for name, log in logs.items():
            log.seek(0)
            outputs[name] = log.read()
            log.close()
    if failed:
        report = "\n".join(f"--- {name} (exit {processes[name].returncode}):\n{outputs[name][-3000:]}"
                           for name in processes)
        raise AssertionError(f"failed: {failed} (time limit {time_limit} s)\n{report}")
    return outputs


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
    for attempt in range(2):  # a port taken between choosing and binding it: once more
        address = f"127.0.0.1:{free_port()}"
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
        try:
            outputs = run_processes(commands, directory, TIME_LIMIT)
            break
        except AssertionError as error:
            if attempt or "address already in use" not in str(error).lower():
                raise
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
    """What `fit` trains on: the reference's global batches, split by process."""
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
