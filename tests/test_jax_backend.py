"""AlignSeg on the JAX backend: the same outputs as TensorFlow for the same weights.

Keras fixes its backend at import, so this module runs in its own pytest session:

    KERAS_BACKEND=jax python -m pytest tests/test_jax_backend.py

and is skipped in a TensorFlow session. The TensorFlow side runs in
subprocesses (`tests/jax_session/tf_reference.py`): it builds randomised
models, saves them as `.keras` files with their TensorFlow outputs, gradients
and post-training-step weights; here they are loaded on JAX and compared, and
a model trained and saved on JAX is loaded back on TensorFlow.
"""

import json

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="JAX session only: run with KERAS_BACKEND=jax (see the module docstring).",
)

from jax_session import cases  # noqa: E402
from jax_session.tf_comparison import assert_close  # noqa: E402
from jax_session.tf_comparison import check_fit_save_and_load  # noqa: E402
from jax_session.tf_comparison import check_layers  # noqa: E402
from jax_session.tf_comparison import check_batch_norm_folding  # noqa: E402
from jax_session.tf_comparison import check_mixed_bfloat16_inference  # noqa: E402
from jax_session.tf_comparison import check_predict  # noqa: E402
from jax_session.tf_comparison import check_training_step  # noqa: E402
from jax_session.tf_comparison import check_without_tensorflow  # noqa: E402
from jax_session.tf_comparison import finish_helper  # noqa: E402
from jax_session.tf_comparison import make_reference  # noqa: E402
from jax_session.tf_comparison import reference_file  # noqa: E402
from jax_session.tf_comparison import run_helper  # noqa: E402
from jax_session.tf_comparison import start_tensorflow_check  # noqa: E402
from jax_session.tf_comparison import start_without_tensorflow  # noqa: E402
from jax_session.tf_comparison import train_one_step  # noqa: E402

from alignseg_keras.layers import AlignmentLayer  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("tf_reference"))


def test_layers_match_tensorflow(reference):
    check_layers(reference)


@pytest.mark.parametrize("mode", ["standard", "official"])
@pytest.mark.parametrize("training", [None, True])  # the sequential and the batched tap sum
def test_alignment_outputs_and_gradients_match_tensorflow(reference, mode, training):
    import jax

    inputs = np.load(reference_file(reference, "layer_inputs"))
    expected = np.load(reference_file(reference, "alignment_gradients"))
    layer = AlignmentLayer(mode)

    def objective(features, offsets):
        return cases.alignment_objective(layer([features, offsets], training=training))

    # The forward sum (batched while training on a CPU: alignment.batches_taps) against
    # TensorFlow's output, then the gradients, which also depend on it through the objective.
    output = layer([inputs["coarse"], inputs["offsets"]], training=training)
    assert_close(output, np.load(reference_file(reference, "layer_outputs"))[f"align_{mode}"])
    gradients = jax.jit(jax.grad(objective, argnums=(0, 1)))(inputs["coarse"], inputs["offsets"])
    assert_close(gradients[0], expected[f"{mode}_features"])
    assert_close(gradients[1], expected[f"{mode}_offsets"])
    assert np.abs(np.asarray(gradients[1])).max() > 0


@pytest.mark.parametrize("training", [None, True])  # the sequential and the batched tap sum
def test_bfloat16_alignment_is_within_rounding_of_tensorflows_float32(reference, training,
                                                                    monkeypatch):
    # bfloat16 features, as under mixed_bfloat16 (batched while training on a CPU:
    # alignment.batches_taps), against TensorFlow's float32 output: the features' rounding
    # (u = 2**-8 each) and at most 5 u for the weighted sum of the 4 taps, whose weights add
    # up to at most 1, so within 6 u max|features| (+ the float32 comparison's tolerance).
    import jax

    from alignseg_keras.hardware import has_accelerator
    from alignseg_keras.testing.spies import record_tap_sums

    batched = record_tap_sums(monkeypatch)
    inputs = np.load(reference_file(reference, "layer_inputs"))
    features = keras.ops.cast(inputs["coarse"], "bfloat16")
    layer = AlignmentLayer("official")
    # `call`, not `__call__`: a float32 layer would cast bfloat16 inputs back to float32.
    output = layer.call([features, inputs["offsets"]], training=training)
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    assert batched == [bool(training) and has_accelerator() is False]
    expected = np.load(reference_file(reference, "layer_outputs"))["align_official"]
    bound = 6 * 2.0**-8 * np.abs(inputs["coarse"]).max() + cases.TOLERANCE * np.abs(expected).max()
    error = np.abs(np.asarray(keras.ops.cast(output, "float32")) - expected)
    assert error.max() <= bound, (error.max(), bound)

    def objective(features, offsets):
        output = layer.call([features, offsets], training=training)
        return cases.alignment_objective(keras.ops.cast(output, "float32"))

    gradients = jax.jit(jax.grad(objective, argnums=(0, 1)))(features, inputs["offsets"])
    assert keras.backend.standardize_dtype(gradients[0].dtype) == "bfloat16"
    assert all(np.isfinite(np.asarray(keras.ops.cast(g, "float32"))).all() for g in gradients)


def test_alignseg_outputs_match_tensorflow(reference):
    import jax

    model = keras.saving.load_model(reference_file(reference, "model"))
    expected = check_predict(model, reference)
    images = cases.images()

    # Training mode as JAX runs it in a train step: a jitted stateless call.
    @jax.jit
    def training_call(trainable, non_trainable, x):
        outputs, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return outputs

    training = training_call(
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        images,
    )
    assert_close(training["logits"], expected["train_logits"])
    assert_close(training["aux_logits"], expected["train_aux_logits"])


def test_training_step_matches_tensorflow_and_saves_for_tensorflow(reference, tmp_path):
    model, loss = train_one_step(reference)
    check_training_step(reference, model, loss)
    finish_helper(start_tensorflow_check(model, tmp_path))


def test_fit_with_default_compile_then_save_and_load(tmp_path):
    check_fit_save_and_load(tmp_path)


def test_model_export_writes_a_saved_model_for_images_of_any_size(tmp_path):
    # jax2tf traced the gradients too and failed on the symbolic padding, deep inside
    # TensorFlow; an inference export needs none.
    import tensorflow as tf

    model = cases.tiny_alignseg()
    cases.randomize_weights(model)
    model.export(str(tmp_path / "saved_model"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    images = np.random.default_rng(1).uniform(0, 255, (1, 50, 70, 3)).astype("float32")
    assert_close(np.asarray(served.serve(images)), model.predict(images, verbose=0))


def test_mixed_bfloat16_inference_is_close_to_float32(reference):
    check_mixed_bfloat16_inference(keras.saving.load_model(reference_file(reference, "model")))


def test_folded_batch_normalization_predicts_the_same_logits(reference):
    check_batch_norm_folding(keras.saving.load_model(reference_file(reference, "model")))


def test_data_parallel_step_equals_single_device_step():
    output = run_helper(
        "data_parallel.py",
        env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["max_weight_difference"] <= 1e-4 * max(result["weight_scale"], 1.0)
    assert abs(result["parallel_loss"] - result["single_loss"]) <= 1e-4 * abs(result["single_loss"])


def test_alignseg_works_without_tensorflow():
    check_without_tensorflow(start_without_tensorflow("jax"))


def test_the_command_line_runs_its_steps_through_jax_jit(tmp_path, caplog):
    import logging

    import jax

    from alignseg_keras.cli import build_parser
    from alignseg_keras.cli.common import steps_through_xla_on_jax
    from alignseg_keras.cli.train import _build_model
    from alignseg_keras.cli.train import resolve_pipeline_defaults

    # `alignseg train` without --xla: jit_compile=False ran every operation on its own.
    args = resolve_pipeline_defaults(build_parser().parse_args(
        ["train", "--backbone", "resnet18", "--decoder-channels", "8"]))
    assert _build_model(args, num_classes=3).jit_compile is True
    # A .keras file of a TensorFlow training without --xla says jit_compile=False.
    model = cases.tiny_alignseg()
    model.compile(jit_compile=False)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.jit_compile is False
    loaded = steps_through_xla_on_jax(loaded)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        loaded.predict_on_batch(cases.images()[:1])
    compiled = [record.getMessage() for record in caplog.records]
    assert any("jit(predict_step)" in message for message in compiled), compiled[:5]


def test_the_ablation_runs_on_jax(tmp_path):
    from benchmarks import ablation

    runs, output = tmp_path / "runs", tmp_path / "ablation.md"
    ablation.main(["--mode", "tiny", "--variants", "baseline", "full", "--seeds", "0",
                   "--runs", str(runs), "--output", str(output), "--jobs", "0"])
    for variant in ("baseline", "full"):
        result = json.loads((runs / f"{variant}_seed0.json").read_text())
        assert result["backend"] == "jax" and 0.0 <= result["miou"] <= 1.0
    assert "backend: jax" in output.read_text()


def test_frozen_inference_names_the_backend_it_needs():
    from alignseg_keras.frozen_inference import FrozenInferenceModel
    from alignseg_keras.testing import tiny_alignseg

    with pytest.raises(ValueError, match=r"needs KERAS_BACKEND=tensorflow \(current: 'jax'\)"):
        FrozenInferenceModel(tiny_alignseg(num_classes=3))


def test_the_command_line_refuses_frozen_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from alignseg_keras import cli

    loaded = []
    monkeypatch.setattr(keras.saving, "load_model", lambda path: loaded.append(path))
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    assert cli.main(["predict", str(image), "--model", str(tmp_path / "model.keras"), "--output",
                     str(tmp_path / "out"), "--frozen"]) == 2
    error = capsys.readouterr().err
    assert "--frozen freezes a TensorFlow graph and needs KERAS_BACKEND=tensorflow (current: 'jax')" in error
    assert "leave out --frozen" in error and loaded == []


# Compiles a convolution's gradients and prints whether XLA gave any of them to YNNPACK.
YNN_PROBE = """
import jax, jax.numpy as jnp
x, k = jnp.ones((2, 64, 64, 64)), jnp.ones((3, 3, 64, 64))
conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
gradients = jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1))
print("__ynn_fusion" in jax.jit(gradients).lower(x, k).compile().as_text())
"""


def test_the_flag_of_the_training_note_keeps_convolutions_from_ynnpack():
    """What `hardware.ynn_training_hint` tells users to set does what it says with the
    installed jax: with it XLA's CPU compiler gives no convolution gradient to YNNPACK,
    and on a CPU without AVX-512, where the note is given, it does without it (fresh
    processes: XLA reads XLA_FLAGS once, when the backend starts)."""
    import os
    import subprocess
    import sys

    from alignseg_keras import hardware

    environ = {key: value for key, value in os.environ.items() if key != hardware.XLA_FLAGS_VARIABLE}
    answers = []
    for xla_flags in (None, f"{hardware.YNN_FUSION_FLAG}="):
        env = dict(environ, JAX_PLATFORMS="cpu")
        if xla_flags is not None:
            env[hardware.XLA_FLAGS_VARIABLE] = xla_flags
        answers.append(subprocess.run([sys.executable, "-c", YNN_PROBE], env=env, check=True,
                                      capture_output=True, text=True).stdout.strip())
    assert answers[1] == "False"
    flags = hardware.cpu_flags()
    if flags is not None and hardware.AVX512_CPU_FEATURE not in flags:  # where the note is given
        assert answers[0] == "True"


# What docs/jax.md ("Start-up") tells users to set, and a process that compiles what building
# a model and its first call compile: an initialiser's program and a jitted step.
COMPILATION_CACHE_SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}
COMPILING_PROCESS = """
import jax, jax.numpy as jnp
kernel = jax.random.truncated_normal(jax.random.key(0), -2.0, 2.0, (3, 3, 8, 16))
step = jax.jit(lambda a: jnp.tanh(a @ a.T).sum())
print(float(kernel.sum() + step(jnp.ones((4, 4)))))
"""


def test_the_compilation_cache_settings_keep_programs_for_later_processes(tmp_path):
    """The documented variables, read by the installed jax in fresh processes: the first
    process writes its programs, small ones included, and a second one finds them all and
    writes nothing."""
    import os
    import subprocess
    import sys

    from jax_session import processes

    cache = tmp_path / "cache"
    env = processes.environment(1, JAX_COMPILATION_CACHE_DIR=str(cache),
                                **COMPILATION_CACHE_SETTINGS)
    entries = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", COMPILING_PROCESS], env=env, check=True,
                       capture_output=True, text=True)
        entries.append(sorted(os.listdir(cache)))
    # The initialiser, the step and the small programs around them (8 with jax 0.10.2); with
    # JAX's default threshold of a second, at most the process's first, slowest compile.
    assert len(entries[0]) >= 4, entries[0]
    assert entries[1] == entries[0]


def test_train_notes_what_xla_kernels_would_save_on_a_cpu(monkeypatch, capsys, tmp_path):
    from alignseg_keras import cli
    from alignseg_keras import hardware
    from alignseg_keras.cli import common

    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=hardware.CPUINFO: frozenset({"avx2"}))

    def stop(*args, **kwargs):
        raise ValueError("stopped after the note")

    monkeypatch.setattr(common, "load_dataset", stop)
    for xla_flags, noted in ((None, True), (f"{hardware.YNN_FUSION_FLAG}=", False)):
        if xla_flags is None:
            monkeypatch.delenv(hardware.XLA_FLAGS_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(hardware.XLA_FLAGS_VARIABLE, xla_flags)
        assert cli.main(["train", "--output-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "stopped after the note" in err
        assert ("alignseg train: note: on this CPU (no AVX-512) JAX's XLA" in err) == noted


def test_the_offset_model_predicts_on_jax():
    # Its outputs were Keras' tracked dict, which a jitted predict step cannot return.
    from alignseg_keras.testing import tiny_alignseg

    model = tiny_alignseg(num_classes=3)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    offsets = model.offset_model()
    predicted = offsets.predict(images, verbose=0)
    called = offsets(images)
    assert type(predicted) is dict and set(predicted) == set(called)
    for name, field in predicted.items():
        np.testing.assert_array_equal(field, np.asarray(called[name]))


def test_a_failed_predict_of_the_offset_model_leaves_the_segmenters_weights():
    # The offset model shares the segmenter's layers: an error in its own predict on JAX
    # left every shared variable empty ("'NoneType' object is not callable" afterwards).
    from alignseg_keras.testing import tiny_alignseg

    model = tiny_alignseg(num_classes=3)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    before = model.predict(images, verbose=0)

    def batches():  # the second batch has 2 channels: the error comes in a step
        yield (images,)
        yield (images[..., :2],)

    with pytest.raises(ValueError):
        model.offset_model().predict(batches(), steps=2, verbose=0)
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)


def test_sync_batchnorm_true_is_ignored_with_a_warning_and_trains():
    # It built, then failed at the first training step inside Keras' BatchNormalization
    # ("synchronized=True is not supported with JAX"), also for files saved on TensorFlow
    # with the argument given.
    from alignseg_keras.testing import tiny_alignseg

    with pytest.warns(UserWarning, match="sync_batchnorm=True synchronises the replicas of a "
                                         "tf.distribute strategy, which the jax backend"):
        model = tiny_alignseg(num_classes=3, sync_batchnorm=True)
    assert model.sync_batchnorm is False
    assert model.get_config()["sync_batchnorm"] is True  # saved as given, for TensorFlow
    model.compile()
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    masks = np.random.default_rng(1).integers(0, 3, (2, 32, 32)).astype("int32")
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
