"""AlignSeg on the PyTorch backend: the same outputs as TensorFlow for the same weights.

Keras fixes its backend at import, so this module runs in its own pytest session:

    KERAS_BACKEND=torch python -m pytest tests/test_torch_backend.py

and is skipped in the other sessions. As in the JAX session
(tests/test_jax_backend.py), a TensorFlow subprocess
(`tests/jax_session/tf_reference.py`) builds randomised models and saves them
as `.keras` files with their TensorFlow outputs, gradients and
post-training-step weights; here they are loaded on torch and compared within
`cases.TOLERANCE` (float32 rounding, see there), and a model trained and saved
on torch is loaded back on TensorFlow. The TensorFlow-only features refuse
torch with an error that says what to use instead. Two subprocesses run in
the background while the comparisons do (the TensorFlow-free run of
`without_tensorflow.py`, and TensorFlow loading the model trained here); the
last tests wait for them.
"""

import re

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="torch session only: run with KERAS_BACKEND=torch (see the module docstring).",
)

from jax_session import cases  # noqa: E402
from jax_session.tf_comparison import assert_close  # noqa: E402
from jax_session.tf_comparison import check_layers  # noqa: E402
from jax_session.tf_comparison import check_batch_norm_folding  # noqa: E402
from jax_session.tf_comparison import check_mixed_bfloat16_inference  # noqa: E402
from jax_session.tf_comparison import check_predict  # noqa: E402
from jax_session.tf_comparison import check_training_step  # noqa: E402
from jax_session.tf_comparison import check_without_tensorflow  # noqa: E402
from jax_session.tf_comparison import finish_helper  # noqa: E402
from jax_session.tf_comparison import make_reference  # noqa: E402
from jax_session.tf_comparison import reference_file  # noqa: E402
from jax_session.tf_comparison import start_tensorflow_check  # noqa: E402
from jax_session.tf_comparison import start_without_tensorflow  # noqa: E402
from jax_session.tf_comparison import stop_helper  # noqa: E402
from jax_session.tf_comparison import train_one_step  # noqa: E402

from alignseg_keras.cli import main as alignseg  # noqa: E402
from alignseg_keras.layers import AlignmentLayer  # noqa: E402
from alignseg_keras.testing import tiny_alignseg  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def without_tensorflow():
    """The TensorFlow-free run (`without_tensorflow.py`), started first: it runs in the
    background beside the comparisons, and the last test waits for it."""
    process = start_without_tensorflow("torch")
    yield process
    stop_helper(process)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("tf_reference"))


@pytest.fixture(scope="module")
def trained(reference, tmp_path_factory):
    """`(model, loss, check)`: the TensorFlow model trained one step here, and the
    TensorFlow process that loads it back (saved), running in the background."""
    model, loss = train_one_step(reference)
    check = start_tensorflow_check(model, tmp_path_factory.mktemp("trained_on_torch"))
    yield model, loss, check
    stop_helper(check)


@pytest.fixture(scope="module")
def tf_model(reference):
    """The randomised AlignSeg saved on TensorFlow, loaded here; no test changes its state."""
    return keras.saving.load_model(reference_file(reference, "model"))


def test_layers_match_tensorflow(reference):
    check_layers(reference)


def autograd_node_names(tensor):
    """Names of every node of the autograd graph that produced `tensor`."""
    names, pending, seen = set(), [tensor.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("mode", ["standard", "official"])
def test_alignment_gradients_match_tensorflow(reference, mode):
    import torch

    inputs = np.load(reference_file(reference, "layer_inputs"))
    expected = np.load(reference_file(reference, "alignment_gradients"))
    features = torch.tensor(inputs["coarse"], requires_grad=True)
    offsets = torch.tensor(inputs["offsets"], requires_grad=True)
    output = AlignmentLayer(mode)([features, offsets])
    # The hand-written gradient of `_sample_rows` (ops.custom_gradient is a
    # torch.autograd.Function here), not autodiff of the four gathers.
    assert "CustomGradientFunctionBackward" in autograd_node_names(output)
    objective = cases.alignment_objective(output)
    feature_grad, offset_grad = torch.autograd.grad(objective, (features, offsets))
    assert_close(feature_grad.numpy(), expected[f"{mode}_features"])
    assert_close(offset_grad.numpy(), expected[f"{mode}_offsets"])
    assert offset_grad.abs().max() > 0


def test_alignseg_outputs_match_tensorflow(reference, tf_model):
    expected = check_predict(tf_model, reference)
    # Training mode as in a train step (BatchNorm on the batch statistics),
    # stateless so that the model keeps its moving statistics.
    training, _ = tf_model.stateless_call(
        [variable.value for variable in tf_model.trainable_variables],
        [variable.value for variable in tf_model.non_trainable_variables],
        cases.images(),
        training=True,
    )
    assert_close(keras.ops.convert_to_numpy(training["logits"]), expected["train_logits"])
    assert_close(keras.ops.convert_to_numpy(training["aux_logits"]), expected["train_aux_logits"])


def test_training_step_matches_tensorflow(reference, trained):
    model, loss, _ = trained
    check_training_step(reference, model, loss)


def test_mixed_bfloat16_inference_is_close_to_float32(tf_model):
    check_mixed_bfloat16_inference(tf_model)


def test_folded_batch_normalization_predicts_the_same_logits(tf_model):
    check_batch_norm_folding(tf_model)


def test_exports_on_torch_say_what_to_use_instead(tf_model, tmp_path):
    from alignseg_keras.export import export_model
    from alignseg_keras.export import export_saved_model

    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow.*current: 'torch'"):
        export_saved_model(tf_model, str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="ONNX export does not work on the torch backend"):
        export_model(tf_model, str(tmp_path / "model.onnx"), format="onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "options,message",
    [
        (["--xla"], "--xla compiles the training step with XLA, which the torch backend"),
        (["--distribute", "mirrored"], "needs KERAS_BACKEND=tensorflow \\(the backend is 'torch'\\)"),
        (["--distribute", "data_parallel"], "runs on the JAX backend .*the backend is 'torch'"),
    ],
    ids=["xla", "mirrored", "data_parallel"],
)
def test_training_options_of_other_backends_are_refused(options, message, tmp_path, capsys):
    output = tmp_path / "run"
    command = ["train", "--dataset", "synthetic", "--synthetic-images", "2", "--steps", "1",
               "--output-dir", str(output), *options]
    assert alignseg(command) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert not (output / "model.keras").exists()


def test_a_file_saved_with_jit_compile_loads_eager_and_predicts_read_only_images(tmp_path):
    # Files saved on JAX by earlier versions hold jit_compile=True; torch would hand
    # the steps to torch.compile, which crashed inside dynamo on read-only arrays.
    model = tiny_alignseg(3)
    model.compile(jit_compile=True)
    assert model.get_compile_config()["jit_compile"] is True
    model.save(tmp_path / "model.keras")
    with pytest.warns(UserWarning, match="loads with jit_compile='auto'"):
        restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.jit_compile is False
    images = np.random.default_rng(0).integers(0, 256, (1, 40, 56, 3)).astype("uint8")
    images.flags.writeable = False  # as image_files.read_image gives them
    assert restored.predict(images, verbose=0).shape == (1, 40, 56, 3)


def test_torch_tensors_are_checked_as_arrays_are():
    import torch

    model = tiny_alignseg(3)
    model.compile()
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.integers(0, 256, (2, 32, 32, 3)).astype("float32"))
    masks = torch.as_tensor(rng.integers(0, 3, (2, 32, 32)).astype("int32"))
    model.fit(images, masks, epochs=1, verbose=0)
    assert model.predict(images, verbose=0).shape == (2, 32, 32, 3)
    bad = images.clone().to(torch.bfloat16)
    bad[1, 3, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        model.predict(bad, verbose=0)
    with pytest.raises(ValueError, match=r"\[7\]"):
        model.fit(images, torch.full((2, 32, 32), 7, dtype=torch.int32), epochs=1, verbose=0)


def test_alignseg_works_without_tensorflow(without_tensorflow):
    # fit with the default compile() (mean IoU included), .keras save and load, the
    # inference modes, offset pictures and `alignseg predict`, TensorFlow blocked.
    check_without_tensorflow(without_tensorflow)


def test_model_trained_on_torch_loads_on_tensorflow_with_the_same_outputs(trained):
    finish_helper(trained[2])
