"""compile() defaults, fit on arrays and datasets, and saving of the compiled state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from alignseg_keras.losses import OhemCrossEntropy
from alignseg_keras.losses import SegmentationCrossEntropy
from alignseg_keras.losses import loss_from_spec
from alignseg_keras.metrics import MeanIoU
from alignseg_keras.optimizers import WarmupPolynomialDecay
from alignseg_keras.optimizers import PyTorchSGD
from alignseg_keras.optimizers import paper_sgd
from alignseg_keras.testing import loss_references
from alignseg_keras.testing import tiny_alignseg


def tiny_model(**kwargs):
    return tiny_alignseg(3, seed=None, **kwargs)


def toy_data(n=4, size=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3)).astype("uint8")
    masks = (images[..., 0] // 86).astype("int32")  # classes 0..2 from the red channel
    masks[:, :2] = 255
    return images, masks


@pytest.mark.parametrize("given", [{}, {"optimizer": "auto", "loss": "auto", "metrics": "auto"}])
def test_compile_defaults_are_the_paper_recipe(given):
    model = tiny_model()
    model.compile(**given)  # "auto" as keras-hub's tasks take it
    assert isinstance(model.optimizer, PyTorchSGD)
    assert (model.optimizer.momentum, model.optimizer.coupled_weight_decay) == (0.9, 1e-4)
    assert isinstance(model.optimizer._learning_rate, WarmupPolynomialDecay)
    assert model.optimizer._learning_rate.power == 0.9
    assert isinstance(model.loss, SegmentationCrossEntropy)
    assert model.aux_loss_weight == 0.4
    metrics = model._compile_config.config["weighted_metrics"]
    assert len(metrics) == 1 and isinstance(metrics[0], MeanIoU)
    assert metrics[0].num_classes == 3


def test_the_default_metric_ignores_what_the_loss_ignores():
    model = tiny_model()
    model.compile(loss=OhemCrossEntropy(ignore_index=0))
    (metric,) = model._compile_config.config["weighted_metrics"]
    assert metric.ignore_index == 0 == model.ignore_index
    model.compile(ignore_index=7)
    assert model._compile_config.config["weighted_metrics"][0].ignore_index == 7


def test_the_default_metric_joins_the_users_weighted_metrics():
    model = tiny_model()
    model.compile(weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()])
    kinds = [type(m) for m in model._compile_config.config["weighted_metrics"]]
    assert kinds == [keras.metrics.SparseCategoricalAccuracy, MeanIoU]  # it dropped the mean IoU
    mine = MeanIoU(3, ignore_index=0)
    model.compile(weighted_metrics=[mine])
    assert model._compile_config.config["weighted_metrics"] == [mine]


def test_an_ignore_label_that_is_a_class_is_refused():
    # With 300 classes the default ignore label, 255, is a class: it counted for nothing.
    model = tiny_alignseg(300, seed=None)
    message = (r"The ignore label 255 is one of the model's 300 classes \(0..299\): pixels of "
               r"class 255 would count for nothing .* compile\(ignore_index=-1\)")
    for arguments in ({}, {"loss": OhemCrossEntropy()},
                      {"ignore_index": -1, "aux_loss": SegmentationCrossEntropy()}):
        with pytest.raises(ValueError, match=message):
            model.compile(**arguments)
    model.compile(ignore_index=-1)
    assert model.ignore_index == -1
    assert model._compile_config.config["weighted_metrics"][0].ignore_index == -1


def test_a_file_compiled_with_such_an_ignore_label_still_loads(tmp_path, monkeypatch):
    from alignseg_keras.models import alignseg

    model = tiny_alignseg(300, seed=None)
    monkeypatch.setattr(alignseg, "check_ignore_label", lambda *args: None)  # an earlier version
    model.compile()
    model.save(tmp_path / "many.keras")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"The ignore label 255 is one of the model's 300 classes.*"
                                         r"it loads as saved: compile it again before training"):
        loaded = keras.saving.load_model(tmp_path / "many.keras")
    assert loaded.compiled and loaded.ignore_index == 255
    with pytest.raises(ValueError, match="The ignore label 255 is one of"):
        loaded.compile()


def test_class_weight_is_refused_for_the_losses_class_weights():
    # Keras' class_weight takes one label per sample: it failed in a NumPy conversion.
    images, masks = toy_data(n=2)
    model = tiny_model()
    model.compile()
    with pytest.raises(ValueError, match=r"`class_weight` weights each sample by its one label.*"
                                         r"SegmentationCrossEntropy\(class_weights="):
        model.fit(images, masks, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, verbose=0)


def test_sample_weights_weight_images_in_evaluate_and_fit():
    images, masks = toy_data()
    model = tiny_alignseg(3, seed=0)
    model.compile()  # its default mean IoU too: it was given no weights (a plain metric)
    first = model.evaluate(images[:1], masks[:1], verbose=0, return_dict=True)
    weighted = model.evaluate(images[:2], masks[:2], sample_weight=np.array([1.0, 0.0]), verbose=0,
                              return_dict=True)
    both = model.evaluate(images[:2], masks[:2], verbose=0, return_dict=True)
    assert sorted(weighted) == ["loss", "mean_iou"] and both["mean_iou"] != first["mean_iou"]
    for name in weighted:  # float32 rounding of the sums
        np.testing.assert_allclose(weighted[name], first[name], rtol=1e-5, err_msg=name)
    history = model.fit(images, masks, sample_weight=np.array([1.0, 2.0, 0.0, 1.0]), batch_size=2,
                        verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    weights = model.get_weights()
    for run in (model.fit, model.evaluate):  # negative: a loss of -5e16, then NaN weights
        with pytest.raises(ValueError, match="`sample_weight` holds 1 value"):
            run(images[:2], masks[:2], sample_weight=np.array([1.0, -1.0]), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_fit_arrays_sets_the_poly_steps_and_adds_the_aux_loss():
    images, masks = toy_data()
    model = tiny_model()
    model.compile(aux_loss_weight=0.0)
    x = images[:2]
    y = masks[:2]
    main_only = float(model.compute_loss(x=x, y=y, y_pred=model(x, training=False)))
    outputs = {"logits": model(x, training=False), "aux_logits": model(x, training=False)}
    model.aux_loss_weight = 0.5
    np.testing.assert_allclose(
        float(model.compute_loss(x=x, y=y, y_pred=outputs)), 1.5 * main_only, rtol=1e-5
    )
    history = model.fit(images, masks, batch_size=2, epochs=2, verbose=0)
    assert model.optimizer._learning_rate.decay_steps == 4
    assert np.isfinite(history.history["loss"]).all()
    assert "mean_iou" in history.history


def test_the_aux_loss_reproduces_the_released_ohem_flag():
    # The authors' train.py with --ohem True trains with CriterionOhemDSN: on the main
    # logits cross-entropy + 0.8 x Lovász-softmax, on the auxiliary logits plain
    # cross-entropy weighted 0.1. Checked against the NumPy references of the losses.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 16, 16)).astype("int32")
    labels[:, :3] = 255
    main, aux = (rng.normal(0.0, 3.0, (2, 16, 16, 3)).astype("float32") for _ in range(2))
    model = tiny_model()
    model.compile(loss=loss_from_spec("ce:1,lovasz:0.8"), aux_loss=SegmentationCrossEntropy(),
                  aux_loss_weight=0.1)
    value = model.compute_loss(y=labels, y_pred={"logits": main, "aux_logits": aux})
    expected = (loss_references.reference_cross_entropy(labels, main)
                + 0.8 * loss_references.reference_lovasz_softmax(labels, main)
                + 0.1 * loss_references.reference_cross_entropy(labels, aux))
    # float32 sums of a few hundred terms (as losses_test)
    np.testing.assert_allclose(float(value), expected, rtol=2e-5)
    # Without aux_loss the auxiliary head gets the main loss, as before.
    model.compile(loss=loss_from_spec("ce:1,lovasz:0.8"), aux_loss_weight=0.1)
    value = model.compute_loss(y=labels, y_pred={"logits": main, "aux_logits": aux})
    expected_same = expected + 0.1 * 0.8 * loss_references.reference_lovasz_softmax(labels, aux)
    np.testing.assert_allclose(float(value), expected_same, rtol=2e-5)
    with pytest.raises(ValueError, match="`aux_loss` must be None"):
        model.compile(aux_loss="sparse_categorical_crossentropy")


def test_fit_a_dataset_with_ohem_and_evaluate():
    images, masks = toy_data()
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    # A fixed initialisation: with whatever state earlier tests left, the evaluate loss
    # after two steps ranged from 1.1 to 916 over seeds (BatchNorm's moving statistics)
    # and was once NaN in a whole-suite run (being investigated).
    model = tiny_alignseg(3, seed=0)
    model.compile(loss=OhemCrossEntropy(min_kept=100), total_steps=10)
    model.fit(dataset, epochs=1, verbose=0)
    loss, miou = model.evaluate(dataset, verbose=0)
    assert np.isfinite(loss) and 0.0 <= miou <= 1.0
    assert model.optimizer._learning_rate.decay_steps == 10


def test_compile_creates_the_optimizer_state_before_the_first_step():
    # On TensorFlow, Keras would otherwise create it while tracing the first step,
    # and that step then holds more memory (docs/benchmarks.md).
    model = tiny_model()
    model.compile()
    assert model.optimizer.built
    buffers = model.optimizer.momentum_buffers
    assert [tuple(b.shape) for b in buffers] == [tuple(v.shape) for v in model.trainable_variables]
    images, masks = toy_data()
    model.train_on_batch(images, masks)
    assert model.optimizer.momentum_buffers is buffers and any(np.any(b.numpy()) for b in buffers)


def test_compiled_model_round_trips_through_keras_file(tmp_path):
    images, masks = toy_data()
    model = tiny_model()
    model.compile(loss=OhemCrossEntropy(min_kept=50), aux_loss_weight=0.1,
                  aux_loss=SegmentationCrossEntropy(ignore_index=254))
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "trained.keras")
    restored = keras.saving.load_model(tmp_path / "trained.keras")
    assert isinstance(restored.loss, OhemCrossEntropy)
    assert restored.aux_loss_weight == 0.1
    assert isinstance(restored.aux_loss, SegmentationCrossEntropy)
    assert restored.aux_loss.ignore_index == 254
    assert restored.optimizer._learning_rate.decay_steps == 2
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5
    )
    restored.fit(images, masks, batch_size=2, epochs=1, verbose=0)  # training resumes


@pytest.mark.parametrize("given, saved", [(None, "auto"), (False, False), (True, True)])
def test_a_file_keeps_jit_compile_as_compile_was_given_it(given, saved, tmp_path):
    # Keras saves "auto" resolved on the saving backend (True on JAX, which torch then
    # hands to torch.compile); "auto" is resolved again where the file loads.
    model = tiny_model()
    model.compile(**({} if given is None else {"jit_compile": given}))
    assert model.get_compile_config()["jit_compile"] == saved
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.get_compile_config()["jit_compile"] == saved
    assert restored.jit_compile == model.jit_compile


def test_jit_compile_set_after_compile_is_saved(tmp_path):
    # docs/jax.md's advice for a file saved without jit (`model.jit_compile = True`) was
    # lost when the model was saved again: the file kept compile's argument.
    model = tiny_model()
    model.compile(jit_compile=False)
    model.jit_compile = True
    model.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras").jit_compile is True


def test_frozen_layers_stay_frozen_after_a_reload(tmp_path):
    # They came back trainable (AlignSeg rebuilds its layers from its arguments), the
    # optimizer state of the other weights was dropped, and fit changed the frozen ones.
    import warnings

    from alignseg_keras import AlignSeg

    images, masks = toy_data()
    model = tiny_model()
    model.image_encoder.trainable = False
    model.backbone.get_layer("align_fa2").trainable = False
    model.compile()
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "frozen.keras")
    model.save_to_preset(tmp_path / "preset")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when it skips the optimizer's variables
        restored = keras.saving.load_model(tmp_path / "frozen.keras")
    for loaded in (restored, AlignSeg.from_preset(tmp_path / "preset")):
        assert not loaded.image_encoder.trainable
        assert not loaded.backbone.get_layer("align_fa2").trainable
        assert loaded.backbone.get_layer("align_fa3").trainable
        assert len(loaded.trainable_weights) == len(model.trainable_weights)
    encoder = [np.array(weight) for weight in restored.image_encoder.weights]
    restored.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    for before, after in zip(encoder, restored.image_encoder.weights):
        np.testing.assert_array_equal(before, np.array(after))
    # The fewest layers that say it: not each layer of the frozen encoder.
    assert restored.get_config()["frozen_layers"] == [
        "alignseg_backbone/align_fa2", f"alignseg_backbone/{model.image_encoder.name}"]
    model.trainable = False
    assert not AlignSeg.from_config(model.get_config()).trainable


def trainable_weights(model):
    return [np.array(weight) for weight in model.trainable_weights]


def test_a_second_fit_extends_the_poly_schedule_and_trains():
    images, masks = toy_data()
    model = tiny_model()
    # Without momentum, a step at learning rate 0 leaves the weights exactly as they are.
    model.compile(optimizer=paper_sgd(1e-2, momentum=0.0))
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    schedule = model.optimizer._learning_rate
    assert schedule.decay_steps == 2 and float(schedule(2)) == 0.0
    before = trainable_weights(model)
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert schedule.decay_steps == 4 and int(model.optimizer.iterations) == 4
    np.testing.assert_allclose(float(schedule(2)), 1e-2 * 0.5**0.9, rtol=1e-5)
    changed = [not np.array_equal(old, new) for old, new in zip(before, trainable_weights(model))]
    assert np.mean(changed) > 0.9


def test_train_on_batch_after_compile_trains_at_the_base_rate():
    images, masks = toy_data(n=2)
    model = tiny_model()
    model.compile(warmup_steps=0)
    before = trainable_weights(model)
    loss, _ = model.train_on_batch(images, masks)
    assert np.isfinite(loss)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-2, rtol=1e-6)
    assert not all(np.array_equal(old, new) for old, new in zip(before, trainable_weights(model)))


def test_fit_takes_positional_arguments_and_a_callback_list_and_fits_the_schedule():
    images, masks = toy_data()
    model = tiny_model()
    model.compile()
    # fit(x, y, batch_size, epochs): Keras counts 2 steps per epoch, 3 epochs.
    model.fit(images, masks, 2, 3, 0)
    assert model.optimizer._learning_rate.decay_steps == 6
    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList([history], model=model, epochs=1, steps=4)
    model.fit(images, masks, batch_size=1, callbacks=callbacks, verbose=0)
    assert model.optimizer._learning_rate.decay_steps == 10
    assert np.isfinite(history.history["loss"]).all()
