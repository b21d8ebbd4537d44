"""Timing and machine facts shared by the benchmarks."""

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy")


def interleaved_minimum(candidates, repeats, warmup=1):
    """Minimum wall time in seconds of each callable, run round-robin.

    Args:
        candidates: dict name -> callable taking no argument; each call must
            block until its result is computed.
        repeats: timed rounds; every round runs every candidate once, so
            that load from other processes hits all candidates alike.
        warmup: untimed rounds first (tracing, compilation, allocation).
    """
    for _ in range(warmup):
        for function in candidates.values():
            function()
    best = {name: float("inf") for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def json_of_process(command, cwd, backend):
    """Runs `command` (a benchmark in a fresh process) and returns its last output line as JSON."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_atomic(path, data):
    """Writes the bytes or text `data` to `path` atomically (`alignseg_keras.atomic`)."""
    from alignseg_keras.atomic import atomic_path

    with atomic_path(path) as temporary:
        with open(temporary, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)


def load_average():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _process_status_mib(field):
    """A memory field of /proc/self/status (`VmHWM`, `VmRSS`, `RssFile`, ...), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} is not available on this system.")


def peak_rss_mib():
    """Peak resident memory of this process (VmHWM), in MiB."""
    return _process_status_mib("VmHWM")


def current_rss_mib():
    """Resident memory of this process now (VmRSS), in MiB."""
    return _process_status_mib("VmRSS")


def file_backed_rss_mib():
    """Resident pages of this process mapped from files (RssFile), in MiB: mostly the code
    of the shared libraries loaded (TensorFlow's 0.4-0.5 GiB once its kernels have run, PyTorch's 0.1 GiB).
    They are shared with other processes that map the same files and are dropped, not
    swapped, when memory is short; `peak_rss_mib() - file_backed_rss_mib()` is the peak of
    the rest (the process's anonymous memory: tensors, allocator caches, compiled code) to
    within what was paged in from files between the peak and the call."""
    return _process_status_mib("RssFile")


def resident_memory_before():
    """This process's resident memory before the calls measured (MiB), for `resident_memory_after`."""
    return {"rss_before_mib": current_rss_mib(), "file_rss_before_mib": file_backed_rss_mib()}


def resident_memory_after(before):
    """`before` with the peak after the calls (MiB): the whole peak (VmHWM), the file-backed
    pages then, and the peak less them (`file_backed_rss_mib`), with the same difference before;
    and what the process still holds after the calls (VmRSS)."""
    peak, file_rss = peak_rss_mib(), file_backed_rss_mib()
    return {**before, "peak_rss_mib": peak, "rss_after_mib": current_rss_mib(),
            "file_rss_mib": file_rss, "peak_anonymous_mib": peak - file_rss,
            "anonymous_before_mib": before["rss_before_mib"] - before["file_rss_before_mib"]}


# The instruction sets that decide the bfloat16 and int8 paths of oneDNN and XLA on a CPU.
CPU_FEATURES = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's name with its family and model numbers and the features of `CPU_FEATURES`
    it has: a name alone ("AMD EPYC" on some clouds) does not tell a Zen 4 (family 25) from a
    Zen 5 (family 26), whose AVX-512 units are twice as wide."""
    try:
        with open(cpuinfo) as handle:
            fields = {}
            for line in handle:
                if not line.strip():
                    break  # the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    details = []
    if "cpu family" in fields:
        details.append(f"family {fields['cpu family']}, model {fields.get('model', '?')}")
    features = [feature for feature in CPU_FEATURES if feature in flags]
    if features:
        details.append(" ".join(features))
    return f"{name} ({'; '.join(details)})" if details else name


def gpu_names():
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip()]


def versions():
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def kernel_settings(environ=None):
    """`{name: value}` of the environment variables set in `environ` (default `os.environ`)
    that choose which CPU kernels run: TensorFlow's oneDNN switch and its frozen-weights
    cache, and XLA's flags (JAX). Each can change a time several-fold
    (docs/benchmarks.md), so a measurement names them."""
    from alignseg_keras.checks import ONEDNN_FROZEN_WEIGHTS_VARIABLE
    from alignseg_keras.hardware import ONEDNN_VARIABLE
    from alignseg_keras.hardware import XLA_FLAGS_VARIABLE

    environ = os.environ if environ is None else environ
    names = (ONEDNN_VARIABLE, ONEDNN_FROZEN_WEIGHTS_VARIABLE, XLA_FLAGS_VARIABLE)
    return {name: environ[name] for name in names if name in environ}


def code_version(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
    """The commit of the code that ran (`git rev-parse --short HEAD` of `root`, with
    "+changes" where tracked files differ from it), or None outside a git checkout:
    results must be traceable to the code that made them."""
    def git(*arguments):
        return subprocess.run(["git", "-C", root, *arguments], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")


def machine_info(backend):
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "code": code_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpus": gpu_names(),
        "backend": backend,
        "versions": versions(),
        "settings": kernel_settings(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
    }
