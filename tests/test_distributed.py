"""Synchronised BatchNorm across replicas, with MirroredStrategy over two logical CPUs."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("distributed_checks.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def run_check(name, timeout=600):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), name], capture_output=True, text=True, timeout=timeout, env=ENV
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr[-5000:]


def test_synchronized_batchnorm_matches_one_device_with_the_whole_batch():
    run_check("sync_batchnorm")


def test_replicas_take_the_step_of_one_device_on_the_same_global_batch():
    run_check("replica_loss")
