"""What this machine offers for reduced-precision arithmetic, and a warning when a
requested precision has no fast path on it; what TensorFlow's oneDNN kernels cost
or save on a CPU without AVX-512.

bfloat16 pays off on GPUs and on CPUs with bfloat16 units (AMX or AVX512-BF16,
Intel Sapphire Rapids and later, AMD Zen 4 and later). On other CPUs it gains
nothing in inference, and TensorFlow, which uses oneDNN for bfloat16 only on
CPUs with AVX-512, computes bfloat16 convolution gradients with far slower
kernels: on a 2-core AVX2-only AMD EPYC, an AlignSeg-R101 training step at
512x512, batch 2, took 165.5-166.1 s in bfloat16 against 17.6-17.9 s in
float32 (docs/benchmarks.md). float16 has no fast CPU path in TensorFlow.

`alignseg predict`, `evaluate` and `train` print `precision_warning`'s reason
before they start, and `AlignSeg.compile` gives it as a `UserWarning`, once
per process (`warn_once`); docs/inference.md ("When to use bfloat16") gives
the measurements.

TensorFlow computes its CPU operations with oneDNN or with Eigen, as
`TF_ENABLE_ONEDNN_OPTS` says when it is imported; unset, it chooses oneDNN
only on CPUs with VNNI, AVX512-BF16 or AMX (on Linux). On an AVX2-only CPU oneDNN's
forward convolutions run through a GEMM fallback and its backward ones through
fast AVX2 kernels: on a 2-core AVX2-only AMD EPYC, AlignSeg-R101 inference at
512x512 took 12.0 s with oneDNN against 1.46 s without, and a float32 training
step at 512x512, batch 2, 13.0-13.7 s against 15.7-16.0 s. `alignseg predict`
and `evaluate` warn when the variable turns oneDNN on there
(`onednn_inference_reason`); `alignseg train` says when turning it on would
make its steps faster (`onednn_training_hint`).

JAX compiles with XLA, whose CPU compiler (jax 0.10.2) hands convolutions to
YNNPACK kernels unless `XLA_FLAGS` says otherwise. On the same AVX2-only EPYC
their kernel gradients were 1.2-4.7 times slower than XLA's own, and a float32
training step at 512x512, batch 2, took 35.5-36.8 s against 21.3-22.2 s with
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`; `alignseg train` on JAX
says so there (`ynn_training_hint`). `kernel_note` gives the note of the
process's backend.

Example:
```python
from alignseg_keras.hardware import precision_warning

reason = precision_warning("bfloat16")  # None on a GPU or an AMX CPU
if reason:
    print(reason)
```
"""

import os
import warnings

CPUINFO = "/proc/cpuinfo"

# Either feature gives oneDNN (and XLA) native bfloat16 dot products on a CPU.
BFLOAT16_CPU_FEATURES = ("amx_bf16", "avx512_bf16")

# TensorFlow's oneDNN kernels take bfloat16 only on CPUs with AVX-512 ("oneDNN supports
# DT_BFLOAT16 only on platforms with AVX-512. Falling back to the default Eigen-based
# implementation", TensorFlow's log on an AVX2-only CPU).
AVX512_CPU_FEATURE = "avx512f"

# Read by TensorFlow once, when it is imported: "1"/"true" computes CPU operations with
# oneDNN, "0"/"false" with Eigen (in any case, no spaces: TensorFlow's ReadBoolFromEnvVar).
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

# Read by XLA (JAX's compiler) when the backend starts: space-separated `--name=value` flags.
XLA_FLAGS_VARIABLE = "XLA_FLAGS"
# Which of XLA's CPU fusions YNNPACK computes; an empty list (`--...=`) keeps XLA's own
# convolution kernels (jax 0.10.2: "Comma-separated list of YNN fusion types").
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

BFLOAT16_PRECISIONS = ("bfloat16", "mixed_bfloat16")
FLOAT16_PRECISIONS = ("float16", "mixed_float16")


def cpu_flags(cpuinfo=CPUINFO):
    """The feature flags of the first processor listed in `cpuinfo` (a frozenset),
    or None where the file cannot be read or lists none (not Linux, some containers).

    Example:
    ```python
    "avx512_bf16" in (cpu_flags() or ())
    ```
    """
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def has_accelerator():
    """Whether the Keras backend computes on a GPU or TPU: True or False, or None for
    a backend this function cannot ask (numpy, openvino)."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend not in ("tensorflow", "jax"):
        return None
    # The default device type: GPUs or TPUs where there are any, else the CPUs.
    return not keras.distribution.list_devices()[0].lower().startswith("cpu")


# What float16 costs on a CPU, measured on each backend (a backend not named here is told
# TensorFlow's measurement, as such).
_FLOAT16_ON_CPUS = {
    "tensorflow": "in TensorFlow (4 training steps of AlignSeg-R101 at 512x512 took more than "
                  "25 minutes on an Intel Xeon, see docs/benchmarks.md)",
    "jax": "in JAX's XLA (an AlignSeg-R101 training step at 256x256 took 4.5-4.9 s against "
           "2.4-2.5 s in float32, and inference gained nothing, on a 2-core AMD EPYC, Zen 4; "
           "see docs/jax.md)",
}


def slow_precision_reason(precision, accelerator, flags, backend="tensorflow"):
    """Why `precision` computes no faster than float32 on a machine with `accelerator`
    (True, False or None: unknown) and CPU `flags` (a set, or None: unknown), on Keras'
    `backend`, or None where it may well be faster or the machine is not known well
    enough to say.

    Example:
    ```python
    slow_precision_reason("bfloat16", False, {"avx2"})  # a reason
    slow_precision_reason("bfloat16", False, {"avx512_bf16"})  # None
    ```
    """
    if accelerator is not False:
        return None
    if precision in FLOAT16_PRECISIONS:
        measured = _FLOAT16_ON_CPUS.get(backend, "(measured " + _FLOAT16_ON_CPUS["tensorflow"] + ")")
        return (
            f"{precision} on a machine without a GPU: CPUs have no fast float16 path "
            f"{measured}; use bfloat16 on CPUs with "
            f"{' or '.join(BFLOAT16_CPU_FEATURES)}, float32 elsewhere."
        )
    if precision in BFLOAT16_PRECISIONS and flags is not None and not flags.intersection(
        BFLOAT16_CPU_FEATURES
    ):
        return (
            f"{precision} on a CPU without bfloat16 units (no "
            f"{' or '.join(BFLOAT16_CPU_FEATURES)} among its flags) and no GPU: "
            + _without_bfloat16_units(flags)
            + " Use float32, which is also exact; see docs/inference.md (\"When to "
            "use bfloat16\")."
        )
    return None


def _without_bfloat16_units(flags):
    """What bfloat16 costs on a CPU with these `flags` and no bfloat16 units."""
    if AVX512_CPU_FEATURE in flags:
        return ("oneDNN converts bfloat16 to float32 inside its kernels, so expect little "
                "or no gain over float32 (not measured on such a CPU).")
    return ("inference is no faster than in float32, and TensorFlow, which uses oneDNN "
            "for bfloat16 only with AVX-512, computes its convolution gradients with "
            "Eigen's generic kernels: a training step is about 9 times slower (measured "
            "on an AVX2-only AMD EPYC).")


def onednn_setting(environ=None):
    """What `TF_ENABLE_ONEDNN_OPTS` in `environ` (default `os.environ`) asks TensorFlow
    for: True (oneDNN), False (Eigen), or None where it is unset or not a value
    TensorFlow reads (TensorFlow then decides from the CPU).

    Example:
    ```python
    onednn_setting({"TF_ENABLE_ONEDNN_OPTS": "true"})  # True
    ```
    """
    value = (os.environ if environ is None else environ).get(ONEDNN_VARIABLE, "").lower()
    return {"1": True, "true": True, "0": False, "false": False}.get(value)


def _cpu_without_avx512(accelerator, flags):
    """Whether the machine is known to compute on a CPU that lacks AVX-512."""
    return accelerator is False and flags is not None and AVX512_CPU_FEATURE not in flags


def onednn_inference_reason(setting, accelerator, flags):
    """Why inference will be slow with oneDNN `setting` (`onednn_setting`) on a machine
    with `accelerator` (True, False or None: unknown) and CPU `flags` (a set, or None),
    or None.

    Example:
    ```python
    onednn_inference_reason(True, False, {"avx2"})  # a reason
    onednn_inference_reason(None, False, {"avx2"})  # None: TensorFlow keeps Eigen
    ```
    """
    if setting is not True or not _cpu_without_avx512(accelerator, flags):
        return None
    return (
        f"{ONEDNN_VARIABLE} turns TensorFlow's oneDNN kernels on, on a CPU without AVX-512 "
        "and no GPU: their forward convolutions fall back to GEMM there, with the "
        "BatchNormalization fused into them slower still; AlignSeg-R101 inference at "
        f"512x512 took 12.0 s against 1.46 s with {ONEDNN_VARIABLE}=0 (measured on an "
        "AVX2-only AMD EPYC). Unset it, or set it to 0, for inference; see "
        "docs/benchmarks.md (\"oneDNN on a CPU without AVX-512\")."
    )


def onednn_training_hint(setting, accelerator, flags):
    """What turning oneDNN on would save a training process with oneDNN `setting`, on
    a machine with `accelerator` and CPU `flags` (as `onednn_inference_reason`): a
    sentence where the setting is unset on a CPU without AVX-512, else None (an
    explicit setting, either way, is the user's choice).

    Example:
    ```python
    onednn_training_hint(None, False, {"avx2"})  # a hint
    onednn_training_hint(False, False, {"avx2"})  # None
    ```
    """
    if setting is not None or not _cpu_without_avx512(accelerator, flags):
        return None
    return (
        "on this CPU (no AVX-512) TensorFlow computes with Eigen; with "
        f"{ONEDNN_VARIABLE}=1 in the environment its oneDNN kernels computed a float32 "
        "AlignSeg-R101 training step at 512x512, batch 2, in 13.0-13.7 s against "
        "15.7-16.0 s (measured on an AVX2-only AMD EPYC), but it makes inference in the "
        "same process far slower and two runs no longer train the same model. "
        f"{ONEDNN_VARIABLE}=0 keeps Eigen and silences this note; see docs/training.md."
    )


def xla_flag_given(flag, environ=None):
    """Whether `XLA_FLAGS` in `environ` (default `os.environ`) sets `flag`, with any value.

    Example:
    ```python
    xla_flag_given(YNN_FUSION_FLAG, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="})  # True
    ```
    """
    value = (os.environ if environ is None else environ).get(XLA_FLAGS_VARIABLE, "")
    return any(token.partition("=")[0] == flag for token in value.split())


def ynn_training_hint(flag_given, accelerator, flags):
    """What XLA's own convolution kernels would save a JAX training process in which
    `YNN_FUSION_FLAG` is `flag_given` (True or False), on a machine with `accelerator`
    and CPU `flags` (as `onednn_inference_reason`): a sentence where the flag is not
    given on a CPU without AVX-512 (where it was measured), else None.

    Example:
    ```python
    ynn_training_hint(False, False, {"avx2"})  # a hint
    ynn_training_hint(True, False, {"avx2"})  # None: the user chose
    ```
    """
    if flag_given or not _cpu_without_avx512(accelerator, flags):
        return None
    return (
        "on this CPU (no AVX-512) JAX's XLA computes convolutions with YNNPACK kernels, "
        "whose kernel gradients were 1.2-4.7 times slower than XLA's own; with "
        f"{XLA_FLAGS_VARIABLE}={YNN_FUSION_FLAG}= in the environment a float32 "
        "AlignSeg-R101 training step at 512x512, batch 2, took 21.3-22.2 s against "
        "35.5-36.8 s (measured on an AVX2-only AMD EPYC with jax 0.10.2; the flag is "
        "experimental). Giving the flag any value silences this note; see docs/jax.md."
    )


# What each backend's notes read from the environment, and the rule of each kind. JAX has
# no inference note: the flag of `ynn_training_hint` saved 8-13% there (1.51-1.53 s
# against 1.66-1.73 s at 512x512), too little to print before every run.
_KERNEL_NOTES = {
    "tensorflow": (onednn_setting, {"inference": onednn_inference_reason,
                                    "training": onednn_training_hint}),
    "jax": (lambda: xla_flag_given(YNN_FUSION_FLAG), {"training": ynn_training_hint}),
}


def kernel_note(kind):
    """What the CPU kernels of this process's backend cost (`kind` "inference") or what
    other kernels could save ("training") on this machine, as the environment sets them:
    TensorFlow's oneDNN rules (`onednn_inference_reason`, `onednn_training_hint`) or
    XLA's YNNPACK rule on JAX (`ynn_training_hint`). A sentence, or None.

    Example:
    ```python
    note = kernel_note("inference")  # None unless TF_ENABLE_ONEDNN_OPTS=1 on an AVX2 CPU
    ```
    """
    import keras

    if kind not in ("inference", "training"):
        raise ValueError(f"kind must be 'inference' or 'training'; received {kind!r}.")
    setting, rules = _KERNEL_NOTES.get(keras.backend.backend(), (None, {}))
    if kind not in rules:  # no rule for this backend and kind
        return None
    return rules[kind](setting(), has_accelerator(), cpu_flags())


def precision_warning(precision):
    """`slow_precision_reason` for this machine: a sentence, or None."""
    import keras

    # Other precisions never have a reason: no device query for them (float32 compiles).
    if precision in FLOAT16_PRECISIONS + BFLOAT16_PRECISIONS:
        return slow_precision_reason(precision, has_accelerator(), cpu_flags(),
                                     keras.backend.backend())
    return None


# The precisions warned about in this process, by compute type ("bfloat16", "float16").
_warned = set()


def warn_once(precision, emit=None):
    """Emit `precision_warning(precision)`, if there is one, once per process and compute
    type: through `emit(reason)` where given (the command line prints it), else as a
    `UserWarning`. Returns the reason emitted by this call, or None.

    Example:
    ```python
    warn_once(model.dtype_policy.name)  # "mixed_bfloat16": warns on an AVX2-only CPU
    ```
    """
    compute_type = (precision or "").removeprefix("mixed_")
    if compute_type in _warned:
        return None
    reason = precision_warning(precision)
    if reason is None:
        return None
    _warned.add(compute_type)
    if emit is None:
        warnings.warn(reason, UserWarning, stacklevel=3)
    else:
        emit(reason)
    return reason
