"""Starting, watching and always reaping the processes of a multi-process JAX job in a test.

Used by tests/test_multiprocess_jax.py (the worker job and `alignseg train` as a
two-process job). Every process gets its own session (process group), so that
killing it kills its children too; whatever happens, every process started here
is killed and waited for before the helper returns or raises.
"""

import os
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    """A TCP port of 127.0.0.1 that was free a moment ago (the job's coordinator binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(devices, **variables):
    """This environment for a JAX process on `devices` virtual CPU devices.

    Without any KERAS_DISTRIBUTION_*, XLA_FLAGS, JAX_* or TF_CONFIG variable of
    ours; `variables` are added last.
    """
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("KERAS_DISTRIBUTION_", "XLA_FLAGS", "JAX_", "TF_CONFIG"))
    }
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        # LLVM optimisation off: a tenth of the compile time of the many small
        # programs that initialise the weights, for slower but few steps.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        **variables,
    )
    return env


class JobFailed(AssertionError):
    """A process of the job failed, or the job ran past its time limit."""


class Job:
    """Processes started together from `(name, argv, env)` commands; a context manager.

    Their output goes to `directory/<name>.log`. On leaving the `with` block
    every process still running is killed (SIGKILL, with its children) and all
    are reaped.

    Example:
    ```python
    with Job(commands, tmp_path) as job:
        outputs = job.wait(time_limit=120)
    ```
    """

    def __init__(self, commands, directory, cwd=None):
        self.commands = list(commands)
        self.directory = directory
        self.cwd = cwd or HERE
        self.processes = {}
        self.logs = {}

    def __enter__(self):
        try:
            for name, argv, env in self.commands:
                self.logs[name] = open(os.path.join(self.directory, f"{name}.log"), "w+")
                self.processes[name] = subprocess.Popen(
                    argv, env=env, stdout=self.logs[name], stderr=subprocess.STDOUT,
                    cwd=self.cwd, start_new_session=True,
                )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info):
        self.kill()
        for log in self.logs.values():
            log.close()

    def kill(self):
        """SIGKILLs every process (and its children) that still runs; reaps them all."""
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            process.wait(timeout=30)

    def outputs(self):
        """{name: everything the process printed so far}."""
        outputs = {}
        for name, log in self.logs.items():
            log.flush()
            with open(log.name) as handle:
                outputs[name] = handle.read()
        return outputs

    def returncodes(self):
        return {name: process.poll() for name, process in self.processes.items()}

    def report(self, failed, time_limit):
        outputs = self.outputs()
        text = "\n".join(f"--- {name} (exit {process.poll()}):\n{outputs[name][-3000:]}"
                         for name, process in self.processes.items())
        return f"failed: {failed} (time limit {time_limit} s)\n{text}"

    def wait(self, time_limit, until=None):
        """Waits for every process to exit 0, or for `until()` to be true; returns the outputs.

        Raises `JobFailed` (with every process's output) as soon as a process
        exits with another status (a process waiting for a dead peer would
        otherwise block until JAX's own timeout), or past `time_limit` seconds.
        """
        deadline = time.monotonic() + time_limit
        while True:
            codes = self.returncodes()
            failed = [name for name, code in codes.items() if code not in (None, 0)]
            if failed:
                break
            if until is not None and until():
                return self.outputs()
            if until is None and all(code == 0 for code in codes.values()):
                return self.outputs()
            if time.monotonic() > deadline:
                failed = ["timeout"]
                break
            time.sleep(0.2)
        raise JobFailed(self.report(failed, time_limit))


def run_processes(commands, directory, time_limit, cwd=None):
    """Runs `(name, argv, env)` commands at once until all exit 0; returns {name: output}.

    Raises `JobFailed` when one fails or time runs out; every process is killed
    and reaped on the way out.
    """
    with Job(commands, directory, cwd) as job:
        return job.wait(time_limit)


def with_free_port(start, attempts=2):
    """`start(address)` with a fresh `127.0.0.1:PORT`; once more when the port was
    taken between choosing and binding it. Returns what `start` returns."""
    for attempt in range(attempts):
        address = f"127.0.0.1:{free_port()}"
        try:
            return start(address)
        except JobFailed as error:
            if attempt + 1 == attempts or "address already in use" not in str(error).lower():
                raise
