import keras
import pytest

from alignseg_keras import hardware
from alignseg_keras.cli import main

XEON_CPUINFO = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"
    "processor\t: 1\nflags\t\t: fpu\n\n"
)
ZEN3_CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\n"


@pytest.fixture(autouse=True)
def nothing_warned_yet(monkeypatch):
    monkeypatch.setattr(hardware, "_warned", set())


def write(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_cpu_flags_reads_the_first_processor(tmp_path):
    flags = hardware.cpu_flags(write(tmp_path, XEON_CPUINFO))
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= flags and "amx" not in flags
    assert hardware.cpu_flags(write(tmp_path, ZEN3_CPUINFO)) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert hardware.cpu_flags(str(tmp_path / "missing")) is None
    assert hardware.cpu_flags(write(tmp_path, "processor\t: 0\nmodel name\t: ARM\n")) is None


@pytest.mark.parametrize(
    "precision, accelerator, flags, slow",
    [
        ("bfloat16", False, {"avx2", "avx512f"}, True),
        ("mixed_bfloat16", False, {"avx2"}, True),
        ("bfloat16", False, {"avx2", "avx512_bf16"}, False),
        ("bfloat16", False, {"amx_bf16"}, False),
        ("bfloat16", False, None, False),  # flags unknown: no claim
        ("bfloat16", True, {"avx2"}, False),  # a GPU computes it
        ("bfloat16", None, {"avx2"}, False),  # devices unknown
        ("float16", False, {"avx512_bf16", "amx_bf16"}, True),
        ("mixed_float16", False, None, True),
        ("float16", True, {"avx2"}, False),
        ("float32", False, {"avx2"}, False),
    ],
)
def test_slow_precision_reason(precision, accelerator, flags, slow):
    reason = hardware.slow_precision_reason(
        precision, accelerator, None if flags is None else frozenset(flags)
    )
    assert (reason is not None) == slow
    if slow:
        assert precision in reason and "float32" in reason


def test_the_float16_reason_is_the_backends_measurement():
    jax = hardware.slow_precision_reason("float16", False, None, "jax")
    tensorflow = hardware.slow_precision_reason("float16", False, None, "tensorflow")
    torch = hardware.slow_precision_reason("float16", False, None, "torch")
    assert "in JAX's XLA" in jax and "TensorFlow" not in jax  # it quoted TensorFlow on JAX
    assert "in TensorFlow (4 training steps" in tensorflow
    assert "(measured in TensorFlow (4 training steps" in torch


def test_the_reason_says_what_bfloat16_costs_with_and_without_avx512():
    avx2 = hardware.slow_precision_reason("bfloat16", False, frozenset({"avx2"}))
    avx512 = hardware.slow_precision_reason("bfloat16", False, frozenset({"avx2", "avx512f"}))
    assert "9 times slower" in avx2 and "Eigen" in avx2
    assert "9 times slower" not in avx512 and "little or no gain" in avx512


def test_has_accelerator_agrees_with_the_backend():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        expected = bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    elif backend == "jax":
        import jax

        expected = jax.default_backend() != "cpu"
    else:
        pytest.skip(f"{backend} is checked in its own session")
    assert hardware.has_accelerator() is expected


def on_a_cpu(monkeypatch, flags):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=hardware.CPUINFO: frozenset(flags))


def test_precision_warning_asks_this_machine(monkeypatch):
    on_a_cpu(monkeypatch, {"avx2"})
    assert "bfloat16" in hardware.precision_warning("bfloat16")
    assert hardware.precision_warning("float32") is None
    on_a_cpu(monkeypatch, {"avx2", "avx512_bf16"})
    assert hardware.precision_warning("bfloat16") is None


@pytest.fixture
def restore_dtype_policy():
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("flags, warned", [({"avx2"}, True), ({"avx512_bf16"}, False)])
def test_evaluate_warns_where_bfloat16_is_not_faster(monkeypatch, capsys, flags, warned):
    on_a_cpu(monkeypatch, flags)

    def stop(*args, **kwargs):
        raise ValueError("stopped after the warning")

    monkeypatch.setattr(keras.saving, "load_model", stop)
    assert main(["evaluate", "--model", "m.keras", "--precision", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "stopped after the warning" in err
    assert ("alignseg evaluate: warning: bfloat16 on a CPU without bfloat16 units" in err) == warned


def test_train_warns_about_float16_without_a_gpu(monkeypatch, capsys, tmp_path, restore_dtype_policy):
    on_a_cpu(monkeypatch, {"avx512_bf16", "amx_bf16"})
    from alignseg_keras.cli import common

    def stop(*args, **kwargs):
        raise ValueError("stopped after the warning")

    monkeypatch.setattr(common, "load_dataset", stop)
    code = main(["train", "--precision", "float16", "--output-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "alignseg train: warning: float16 on a machine without a GPU" in err
    assert "stopped after the warning" in err


def test_warn_once_warns_once_per_compute_type(monkeypatch):
    on_a_cpu(monkeypatch, {"avx2"})
    emitted = []
    assert "bfloat16" in hardware.warn_once("bfloat16", emitted.append)
    assert hardware.warn_once("mixed_bfloat16", emitted.append) is None  # the same arithmetic
    assert hardware.warn_once("float32", emitted.append) is None
    assert "float16" in hardware.warn_once("mixed_float16", emitted.append)
    assert len(emitted) == 2
    monkeypatch.setattr(hardware, "_warned", set())
    with pytest.warns(UserWarning, match="9 times slower"):
        hardware.warn_once("mixed_bfloat16")


def test_compile_warns_under_a_policy_with_no_fast_path(monkeypatch, restore_dtype_policy):
    import warnings

    from alignseg_keras.testing import tiny_alignseg

    on_a_cpu(monkeypatch, {"avx2"})
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny_alignseg(num_classes=3)
    with pytest.warns(UserWarning, match="mixed_bfloat16 on a CPU without bfloat16 units"):
        model.compile()
    on_a_cpu(monkeypatch, {"avx2", "avx512_bf16"})
    monkeypatch.setattr(hardware, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.compile()


@pytest.mark.parametrize(
    "environ, setting",
    [
        ({"TF_ENABLE_ONEDNN_OPTS": "1"}, True),
        ({"TF_ENABLE_ONEDNN_OPTS": "TRUE"}, True),
        ({"TF_ENABLE_ONEDNN_OPTS": " 1"}, None),  # TensorFlow does not strip spaces
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False),
        ({"TF_ENABLE_ONEDNN_OPTS": "False"}, False),
        ({"TF_ENABLE_ONEDNN_OPTS": "yes"}, None),  # TensorFlow ignores it and decides
        ({}, None),
    ],
)
def test_onednn_setting(environ, setting):
    assert hardware.onednn_setting(environ) is setting


def test_onednn_setting_reads_the_variable_as_tensorflow_does():
    """TensorFlow's own answer, in fresh processes: oneDNN on for "TRUE", off for "False",
    and for values it does not read (" 1", "yes") whatever it chooses with the variable unset."""
    import os
    import subprocess
    import sys

    ask = "from tensorflow.python.util import _pywrap_util_port as p; print(p.IsMklEnabled())"
    values = ("TRUE", "False", " 1", "yes", None)
    processes = []
    for value in values:
        env = {key: item for key, item in os.environ.items() if key != hardware.ONEDNN_VARIABLE}
        if value is not None:
            env[hardware.ONEDNN_VARIABLE] = value
        processes.append(subprocess.Popen(
            [sys.executable, "-c", ask], env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
            stdout=subprocess.PIPE, text=True,
        ))
    enabled = dict(zip(values, (process.communicate()[0].strip() == "True" for process in processes)))
    assert enabled["TRUE"] is True and enabled["False"] is False
    for value in (" 1", "yes"):
        assert enabled[value] == enabled[None]
        assert hardware.onednn_setting({hardware.ONEDNN_VARIABLE: value}) is None


@pytest.mark.parametrize(
    "setting, accelerator, flags, inference_slow, training_hint",
    [
        (True, False, {"avx2"}, True, False),
        (None, False, {"avx2"}, False, True),
        (False, False, {"avx2"}, False, False),  # Eigen, asked for
        (True, False, {"avx2", "avx512f"}, False, False),
        (None, False, {"avx2", "avx512f"}, False, False),
        (True, True, {"avx2"}, False, False),  # a GPU computes the convolutions
        (None, None, {"avx2"}, False, False),  # devices unknown
        (True, False, None, False, False),  # flags unknown
    ],
)
def test_onednn_notes(setting, accelerator, flags, inference_slow, training_hint):
    flags = None if flags is None else frozenset(flags)
    reason = hardware.onednn_inference_reason(setting, accelerator, flags)
    hint = hardware.onednn_training_hint(setting, accelerator, flags)
    assert (reason is not None) == inference_slow
    assert (hint is not None) == training_hint
    if reason:
        assert "TF_ENABLE_ONEDNN_OPTS" in reason and "12.0 s against 1.46 s" in reason
    if hint:
        assert "TF_ENABLE_ONEDNN_OPTS=1" in hint and "TF_ENABLE_ONEDNN_OPTS=0" in hint


def test_kernel_note_asks_this_process(monkeypatch):
    on_a_cpu(monkeypatch, {"avx2"})
    monkeypatch.setenv(hardware.ONEDNN_VARIABLE, "1")
    assert "12.0 s" in hardware.kernel_note("inference")
    assert hardware.kernel_note("training") is None
    monkeypatch.delenv(hardware.ONEDNN_VARIABLE)
    assert hardware.kernel_note("inference") is None
    assert "13.0-13.7 s" in hardware.kernel_note("training")
    with pytest.raises(ValueError, match="'inference' or 'training'; received 'export'"):
        hardware.kernel_note("export")


@pytest.mark.parametrize(
    "xla_flags, given",
    [
        ("--xla_cpu_experimental_ynn_fusion_type=", True),
        ("--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=dot", True),
        ("--xla_cpu_experimental_ynn_fusion_type", True),
        ("--xla_cpu_experimental_ynn_fusion_type_other=", False),
        ("--xla_force_host_platform_device_count=2", False),
        (None, False),
    ],
)
def test_xla_flag_given(xla_flags, given):
    environ = {} if xla_flags is None else {hardware.XLA_FLAGS_VARIABLE: xla_flags}
    assert hardware.xla_flag_given(hardware.YNN_FUSION_FLAG, environ) is given


@pytest.mark.parametrize(
    "flag_given, accelerator, flags, hint",
    [
        (False, False, {"avx2"}, True),
        (True, False, {"avx2"}, False),  # the user chose
        (False, False, {"avx2", "avx512f"}, False),  # not measured there
        (False, True, {"avx2"}, False),  # a GPU computes the convolutions
        (False, None, {"avx2"}, False),
        (False, False, None, False),
    ],
)
def test_ynn_training_hint(flag_given, accelerator, flags, hint):
    flags = None if flags is None else frozenset(flags)
    sentence = hardware.ynn_training_hint(flag_given, accelerator, flags)
    assert (sentence is not None) == hint
    if sentence:
        assert f"XLA_FLAGS={hardware.YNN_FUSION_FLAG}= " in sentence and "21.3-22.2 s" in sentence


def test_kernel_note_follows_the_backend(monkeypatch):
    """The JAX rule reads XLA_FLAGS, not TensorFlow's variable; torch has no rule."""
    on_a_cpu(monkeypatch, {"avx2"})
    monkeypatch.delenv(hardware.ONEDNN_VARIABLE, raising=False)
    monkeypatch.setenv(hardware.XLA_FLAGS_VARIABLE, "--xla_force_host_platform_device_count=2")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert "21.3-22.2 s" in hardware.kernel_note("training")
    assert hardware.kernel_note("inference") is None
    monkeypatch.setenv(hardware.ONEDNN_VARIABLE, "1")
    monkeypatch.setenv(hardware.XLA_FLAGS_VARIABLE, f"{hardware.YNN_FUSION_FLAG}=")
    assert hardware.kernel_note("training") is None
    assert hardware.kernel_note("inference") is None
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.delenv(hardware.XLA_FLAGS_VARIABLE)
    assert hardware.kernel_note("training") is None
    with pytest.raises(ValueError, match="'inference' or 'training'; received 'export'"):
        hardware.kernel_note("export")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("flags, warned", [({"avx2"}, True), ({"avx2", "avx512f"}, False)])
def test_inference_commands_warn_about_onednn_without_avx512(
    monkeypatch, capsys, tmp_path, command, flags, warned
):
    on_a_cpu(monkeypatch, flags)
    monkeypatch.setenv(hardware.ONEDNN_VARIABLE, "true")

    def stop(*args, **kwargs):
        raise ValueError("stopped after the warning")

    monkeypatch.setattr(keras.saving, "load_model", stop)
    arguments = ["--model", "m.keras"]
    if command == "predict":
        arguments += [str(tmp_path / "x.png"), "--output", str(tmp_path / "out")]
    assert main([command, *arguments]) == 2
    err = capsys.readouterr().err
    assert "stopped after the warning" in err
    assert (f"alignseg {command}: warning: TF_ENABLE_ONEDNN_OPTS turns" in err) == warned


@pytest.mark.parametrize("setting, noted", [(None, True), ("0", False), ("1", False)])
def test_train_notes_what_onednn_would_save_in_float32(monkeypatch, capsys, tmp_path, setting, noted):
    on_a_cpu(monkeypatch, {"avx2"})
    if setting is None:
        monkeypatch.delenv(hardware.ONEDNN_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(hardware.ONEDNN_VARIABLE, setting)
    from alignseg_keras.cli import common

    def stop(*args, **kwargs):
        raise ValueError("stopped after the note")

    monkeypatch.setattr(common, "load_dataset", stop)
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "stopped after the note" in err
    assert ("alignseg train: note: on this CPU (no AVX-512)" in err) == noted
