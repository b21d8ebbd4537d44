import numpy as np
import pytest

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
    assert optimizer.momentum == 0.9
    np.testing.assert_allclose(optimizer.weight_decay, 1e-3)  # 1e-4 coupled, see docstring
