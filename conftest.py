"""Suite-wide pytest hooks.

``ALIGNSEG_RSS_LOG=<folder>`` writes one line per test (worker, resident memory in MiB
after the test, its growth during the test, the test's id) to ``<folder>/<worker>.tsv``:
the record that finds which tests make a worker's memory grow.
"""

import os

import pytest


def _resident_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    folder = os.environ.get("ALIGNSEG_RSS_LOG")
    if not folder:
        yield
        return
    before = _resident_mib()
    yield
    after = _resident_mib()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{worker}.tsv"), "a") as log:
        log.write(f"{worker}\t{after:.0f}\t{after - before:+.0f}\t{item.nodeid}\n")
