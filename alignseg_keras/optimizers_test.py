import keras
import numpy as np
import pytest

from alignseg_keras.optimizers import PolyScheduleLength
from alignseg_keras.optimizers import PyTorchSGD
from alignseg_keras.optimizers import WarmupPolynomialDecay
from alignseg_keras.optimizers import paper_sgd


def test_poly_schedule_follows_the_paper():
    schedule = WarmupPolynomialDecay(1e-2, decay_steps=100)
    for step in (0, 10, 50, 99, 100, 150):
        expected = 1e-2 * (1 - min(step, 100) / 100) ** 0.9
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_linear_warmup():
    schedule = WarmupPolynomialDecay(1e-2, decay_steps=100, warmup_steps=10, warmup_start=0.1)
    np.testing.assert_allclose(float(schedule(0)), 1e-3, rtol=1e-5)
    poly_5 = 1e-2 * (1 - 5 / 100) ** 0.9
    np.testing.assert_allclose(float(schedule(5)), poly_5 * 0.55, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(20)), 1e-2 * 0.8**0.9, rtol=1e-5)


def test_unknown_length_is_a_constant_rate_after_the_warmup():
    schedule = WarmupPolynomialDecay(1e-2, warmup_steps=10)
    np.testing.assert_allclose(float(schedule(0)), 1e-3, rtol=1e-5)
    for step in (10, 1000, 10**6):
        np.testing.assert_allclose(float(schedule(step)), 1e-2, rtol=1e-6)


def test_a_schedule_from_fit_is_extended_and_a_fixed_one_is_not():
    schedule = WarmupPolynomialDecay(1e-2)
    assert schedule.length_from_fit and schedule.extend(0, 100)
    assert float(schedule(100)) == 0.0
    assert schedule.extend(100, 100) and schedule.decay_steps == 200
    np.testing.assert_allclose(float(schedule(100)), 1e-2 * 0.5**0.9, rtol=1e-5)
    assert not schedule.extend(100, 100)
    assert not WarmupPolynomialDecay(1e-2, decay_steps=5).length_from_fit
    with pytest.raises(ValueError, match="positive int or None"):
        WarmupPolynomialDecay(1e-2, decay_steps=0)


def test_config_round_trip_and_paper_sgd():
    schedule = WarmupPolynomialDecay(2e-2, decay_steps=500, warmup_steps=7)
    clone = WarmupPolynomialDecay.from_config(schedule.get_config())
    assert (clone.decay_steps, clone.warmup_steps, clone.initial_learning_rate) == (500, 7, 2e-2)
    assert not clone.length_from_fit
    extended = WarmupPolynomialDecay(2e-2)
    extended.extend(0, 300)
    clone = WarmupPolynomialDecay.from_config(extended.get_config())
    assert clone.length_from_fit and clone.decay_steps == 300
    optimizer = paper_sgd(1e-2, total_steps=1000)
    assert isinstance(optimizer, PyTorchSGD)
    assert (optimizer.momentum, optimizer.coupled_weight_decay) == (0.9, 1e-4)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(clone, PyTorchSGD)
    assert (clone.momentum, clone.coupled_weight_decay) == (0.9, 1e-4)
    assert clone._learning_rate.decay_steps == 1000


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 1e-1), (0.0, 1e-1), (0.9, 0.0)])
def test_pytorch_sgd_matches_torch_optim_sgd(momentum, weight_decay):
    """Against torch.optim.SGD itself, under a learning rate that falls fast
    (poly over 6 steps), where Keras' SGD would differ."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal((3, 4)).astype("float32"), rng.standard_normal((4,)).astype("float32")]
    gradients = [[rng.standard_normal(w.shape).astype("float32") for w in initial] for _ in range(5)]
    schedule = WarmupPolynomialDecay(0.5, decay_steps=6)
    variables = [keras.Variable(w) for w in initial]
    optimizer = PyTorchSGD(schedule, momentum=momentum, weight_decay=weight_decay)
    parameters = [torch.nn.Parameter(torch.tensor(w)) for w in initial]
    reference = torch.optim.SGD(parameters, lr=0.5, momentum=momentum, weight_decay=weight_decay)
    for step, step_gradients in enumerate(gradients):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step_gradients], variables)
        for group in reference.param_groups:
            group["lr"] = float(schedule(step))
        for parameter, gradient in zip(parameters, step_gradients):
            parameter.grad = torch.tensor(gradient)
        reference.step()
    for variable, parameter in zip(variables, parameters):
        # A few float32 roundings per step on values of order 1.
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), parameter.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_pytorch_sgd_excludes_variables_from_weight_decay_and_checks_arguments():
    kept, decayed = keras.Variable(np.ones(2, "float32"), name="bias"), keras.Variable(np.ones(2, "float32"))
    optimizer = PyTorchSGD(1.0, momentum=0.0, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    zero = keras.ops.zeros((2,))
    optimizer.apply([zero, zero], [kept, decayed])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kept), [1.0, 1.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(decayed), [0.5, 0.5])
    with pytest.raises(ValueError, match="`momentum` must be a float in \\[0, 1\\)"):
        PyTorchSGD(momentum=1.0)
    with pytest.raises(ValueError, match="`weight_decay`"):
        PyTorchSGD(weight_decay=-1e-4)


def _dense_model(optimizer):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=optimizer, loss="mse")
    return model


class _Rates(keras.callbacks.Callback):
    """The learning rate the optimizer applies at each step of a fit."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


def test_poly_schedule_length_reads_keras_count_of_the_fit():
    x = np.ones((10, 3), "float32")
    y = np.zeros((10, 1), "float32")
    model = _dense_model(paper_sgd(1e-2, momentum=0.0, weight_decay=0))
    schedule = model.optimizer._learning_rate
    # 10 samples, 20% for validation, batches of 3: Keras counts ceil(8 / 3) = 3
    # steps per epoch; epochs 1 and 2 of 3 are left (initial_epoch=1).
    rates = _Rates()
    model.fit(x, y, batch_size=3, epochs=3, initial_epoch=1, validation_split=0.2, verbose=0,
              callbacks=[PolyScheduleLength(), rates])
    assert schedule.decay_steps == 6 and int(model.optimizer.iterations) == 6
    expected = [1e-2 * (1 - step / 6) ** 0.9 for step in range(6)]
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-5)
    # A PyDataset: its length; a second fit extends from the steps done.
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return x[:2], y[:2]

    model.fit(Batches(), epochs=2, verbose=0, callbacks=[PolyScheduleLength()])
    assert schedule.decay_steps == 6 + 8 and int(model.optimizer.iterations) == 14


def test_poly_schedule_length_leaves_fixed_schedules_and_refuses_unknown_lengths():
    x = np.ones((4, 3), "float32")
    fixed = _dense_model(paper_sgd(1e-2, total_steps=2))
    fixed.fit(x, x[:, :1], batch_size=2, verbose=0, callbacks=[PolyScheduleLength()])
    assert fixed.optimizer._learning_rate.decay_steps == 2
    with pytest.warns(UserWarning, match="schedule ended at step 2"):
        fixed.fit(x, x[:, :1], batch_size=2, verbose=0, callbacks=[PolyScheduleLength()])

    def endless():
        while True:
            yield x[:2], x[:2, :1]

    model = _dense_model(paper_sgd(1e-2))
    with pytest.raises(ValueError, match="needs the number of training steps"):
        model.fit(endless(), shuffle=False, verbose=0, callbacks=[PolyScheduleLength()])
    model.fit(endless(), steps_per_epoch=3, shuffle=False, verbose=0,
              callbacks=[PolyScheduleLength()])
    assert model.optimizer._learning_rate.decay_steps == 3
    constant = _dense_model("sgd")  # not a poly schedule: left alone
    constant.fit(endless(), steps_per_epoch=1, shuffle=False, verbose=0,
                 callbacks=[PolyScheduleLength()])


class _StopAfterEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("killed")


def test_poly_schedule_length_resumes_with_backup_and_restore(tmp_path):
    # A fit of 3 epochs of 2 steps is killed after its first epoch; the same fit
    # with BackupAndRestore resumes at epoch 1 with 2 steps done, so 4 are left
    # and the schedule keeps its length of 6.
    x = np.ones((4, 3), "float32")
    y = np.zeros((4, 1), "float32")
    model = _dense_model(paper_sgd(1e-2, momentum=0.0, weight_decay=0))
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="killed"):
        model.fit(x, y, batch_size=2, epochs=3, verbose=0,
                  callbacks=[backup, PolyScheduleLength(), _StopAfterEpoch()])
    resumed = _dense_model(paper_sgd(1e-2, momentum=0.0, weight_decay=0))
    rates = _Rates()
    resumed.fit(x, y, batch_size=2, epochs=3, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
                           PolyScheduleLength(), rates])
    assert resumed.optimizer._learning_rate.decay_steps == 6
    assert int(resumed.optimizer.iterations) == 6
    expected = [1e-2 * (1 - step / 6) ** 0.9 for step in range(2, 6)]
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-5)
