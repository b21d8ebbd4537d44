import keras
import numpy as np
import pytest

from alignseg_keras.inference import as_precision
from alignseg_keras.inference import inference_model
from alignseg_keras.inference import predict_multiscale
from alignseg_keras.inference import predict_sliding
from alignseg_keras.inference import predict_whole
from alignseg_keras.inference import window_starts
from alignseg_keras.testing import tiny_alignseg


@pytest.fixture(scope="module")
def model():
    return tiny_alignseg(num_classes=4)


@pytest.fixture(scope="module")
def pointwise_model():
    """A per-pixel (1x1 conv) model: its prediction of a pixel ignores the context,
    so any correct tiling must reproduce the whole-image prediction exactly."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((None, None, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Conv2D(5, 1)]
    )


@pytest.fixture(scope="module")
def bfloat16_model(model):
    return as_precision(model, "bfloat16")


def random_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype("uint8")


def spy_on_batches(monkeypatch, model):
    """Records the input shape of every forward pass of `model`."""
    shapes = []
    original = model.predict_on_batch

    def predict_on_batch(x):
        shapes.append(tuple(np.shape(x)))
        return original(x)

    monkeypatch.setattr(model, "predict_on_batch", predict_on_batch)
    return shapes


def test_window_starts_follow_the_authors_scheme():
    assert window_starts(1024, 769) == [0, 255]
    assert window_starts(2048, 769) == [0, 513, 1026, 1279]
    assert window_starts(500, 769) == [0]
    assert window_starts(10, 4, overlap=0.0) == [0, 4, 6]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, overlap=1.0)


def test_whole_returns_probabilities_at_input_size(model):
    images = random_images((3, 37, 50, 3))
    probabilities = predict_whole(model, images, batch_size=2)
    assert probabilities.shape == (3, 37, 50, 4)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    # Eager and compiled forward passes differ by float rounding only.
    logits = np.asarray(model(images))
    np.testing.assert_allclose(
        probabilities, np.asarray(keras.ops.softmax(logits, axis=-1)), atol=1e-4
    )


def test_single_image_convenience(model):
    image = random_images((40, 48, 3))
    single = predict_whole(model, image)
    assert single.shape == (40, 48, 4)
    # A batch of one and the image alone may run different kernels: the logits differ by
    # float32 roundings (1e-5 of their largest magnitude, as frozen_inference_test.py
    # measures), and a softmax moves no probability by more than half the largest change.
    tolerance = 0.5 * 1e-5 * np.abs(model.predict_on_batch(image[None])).max()
    np.testing.assert_allclose(single, predict_whole(model, image[None])[0], atol=tolerance)


def test_sliding_over_an_image_no_larger_than_a_tile_equals_whole(model):
    # The model pads 40x50 to 64x64 with its mean colour; so does a 64x64 tile.
    images = random_images((2, 40, 50, 3))
    np.testing.assert_allclose(
        predict_sliding(model, images, tile_size=64),
        predict_whole(model, images),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        predict_sliding(model, images, tile_size=(40, 50)),
        predict_whole(model, images),
        atol=1e-5,
    )


def test_sliding_reassembles_tiles_exactly_for_a_pointwise_model(pointwise_model):
    # 70x100 with 32x48 tiles: uneven windows, shifted last windows, overlaps.
    images = random_images((2, 70, 100, 3))
    np.testing.assert_allclose(
        predict_sliding(pointwise_model, images, tile_size=(32, 48), batch_size=5),
        predict_whole(pointwise_model, images),
        atol=1e-5,
    )
    # Taller than the image: tiles are padded and the padding cropped off.
    np.testing.assert_allclose(
        predict_sliding(pointwise_model, images, tile_size=(96, 48)),
        predict_whole(pointwise_model, images),
        atol=1e-5,
    )


def test_sliding_batches_fixed_size_tiles_across_images(monkeypatch, pointwise_model):
    shapes = spy_on_batches(monkeypatch, pointwise_model)
    predict_sliding(pointwise_model, random_images((2, 70, 100, 3)), (32, 48), batch_size=5)
    # 3 x 3 windows per image, 18 tiles in batches of 5.
    assert shapes == [(5, 32, 48, 3)] * 3 + [(3, 32, 48, 3)]


def test_sliding_with_overlap_on_a_larger_image(model):
    images = random_images((1, 100, 130, 3))
    probabilities = predict_sliding(model, images, tile_size=64, batch_size=6)
    assert probabilities.shape == (1, 100, 130, 4)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)


def test_multiscale_with_one_scale_and_no_flip_equals_whole(model):
    images = random_images((2, 40, 50, 3))
    np.testing.assert_allclose(
        predict_multiscale(model, images, scales=(1.0,), flip=False),
        predict_whole(model, images),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        predict_multiscale(model, images, scales=(1.0,), flip=False, sliding=64),
        predict_sliding(model, images, tile_size=64),
        atol=1e-5,
    )


def test_flip_average_is_mirror_symmetric(model):
    image = random_images((40, 48, 3))
    flipped = predict_multiscale(model, image[:, ::-1], scales=(1.0,), flip=True)
    plain = predict_multiscale(model, image, scales=(1.0,), flip=True)
    # Exact in exact arithmetic; in float32 the two calls batch the same image
    # differently, and the convolution kernels chosen per batch round differently:
    # logit differences of a few ulps move probabilities near a tie by up to ~1e-4.
    np.testing.assert_allclose(flipped, plain[:, ::-1], atol=1e-4)
    symmetric = np.concatenate([image, image[:, ::-1]], axis=1)
    probabilities = predict_multiscale(model, symmetric, scales=(1.0,), flip=True)
    np.testing.assert_allclose(probabilities, probabilities[:, ::-1], atol=1e-4)


def test_multiscale_averages_logits_over_scales(pointwise_model):
    # For a pointwise model, resizing an image and resizing its logits back
    # commute only approximately, but a constant image stays constant.
    image = np.full((1, 30, 40, 3), 90, "uint8")
    probabilities = predict_multiscale(pointwise_model, image, scales=(0.5, 1.0, 1.5))
    np.testing.assert_allclose(probabilities, predict_whole(pointwise_model, image), atol=1e-5)


def test_multiscale_runs_scales_with_sliding_windows(model, monkeypatch):
    images = random_images((1, 48, 64, 3))
    shapes = spy_on_batches(monkeypatch, model)
    probabilities = predict_multiscale(model, images, scales=(0.75, 1.5), sliding=64)
    assert probabilities.shape == (1, 48, 64, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    # Every forward pass sees 64x64 tiles; flipped copies share the batches.
    assert {shape[1:] for shape in shapes} == {(64, 64, 3)}
    # Per image and its mirror: one padded tile at 36x48, 2 x 2 windows at 72x96.
    assert sum(shape[0] for shape in shapes) == 2 * (1 + 4)


def test_multiscale_sizes_are_those_of_the_authors_zoom(pointwise_model, monkeypatch):
    zoom = pytest.importorskip("scipy.ndimage").zoom
    shapes = spy_on_batches(monkeypatch, pointwise_model)
    scales = (0.5, 0.75, 1.25, 0.1)
    # 1025 x 0.5 and 510 x 0.75 end in .5; 5 x 0.1 rounds to 0.
    for height, width in ((1025, 510), (5, 6)):
        predict_multiscale(pointwise_model, np.zeros((1, height, width, 3), "uint8"), scales, flip=False)
        for scale in scales:
            expected = zoom(np.zeros((height, width)), scale, order=1, prefilter=False).shape
            assert shapes.pop(0)[1:3] == tuple(max(1, side) for side in expected)
    assert not shapes


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: predict_whole(m, np.zeros((2, 8, 8, 4))), "shape"),
        (lambda m: predict_whole(m, np.zeros((8, 8))), "shape"),
        (lambda m: predict_whole(m, np.zeros((1, 8, 8, 3)), batch_size=0), "batch_size"),
        (lambda m: predict_sliding(m, np.zeros((1, 8, 8, 3)), tile_size=(4, 0)), "tile_size"),
        (lambda m: predict_sliding(m, np.zeros((1, 8, 8, 3)), 4, overlap=1.5), "overlap"),
        (lambda m: predict_multiscale(m, np.zeros((1, 8, 8, 3)), scales=()), "scales"),
        (lambda m: predict_multiscale(m, np.zeros((1, 8, 8, 3)), scales=(1, -1)), "scales"),
        (lambda m: predict_whole(m, np.zeros((1, 8, 8, 3)), precision="float16"), "precision"),
        (lambda m: predict_sliding(m, np.zeros((0, 8, 8, 3)), 4, precision="bf16"), "precision"),
        (lambda m: predict_multiscale(m, np.zeros((1, 8, 8, 3)), precision=16), "precision"),
        (lambda m: as_precision(m, "mixed_bfloat16"), "float32, bfloat16"),
    ],
)
def test_bad_arguments_raise_clear_errors(pointwise_model, call, message):
    with pytest.raises(ValueError, match=message):
        call(pointwise_model)


def test_bfloat16_copy_keeps_the_float32_weights_exactly(model, bfloat16_model):
    assert model.dtype_policy.name == "float32"
    assert bfloat16_model.dtype_policy.name == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in bfloat16_model.backbone._flatten_layers()
            if not isinstance(layer, keras.layers.InputLayer)} == {"mixed_bfloat16"}
    assert [v.path for v in bfloat16_model.weights] == [v.path for v in model.weights]
    for original, copy in zip(model.weights, bfloat16_model.weights):
        assert copy.dtype == "float32"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(copy),
                                      keras.ops.convert_to_numpy(original))
    layers = {layer.name: layer for layer in bfloat16_model._flatten_layers()}
    # Convolutions compute in bfloat16; the logits leave the model in float32.
    assert {layer.compute_dtype for layer in layers.values()
            if isinstance(layer, keras.layers.Conv2D)} == {"bfloat16"}
    assert layers["head_crop"].compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert as_precision(model, "float32") is model
    assert as_precision(bfloat16_model, "bfloat16") is bfloat16_model
    back = as_precision(bfloat16_model, "float32")
    assert back.dtype_policy.name == "float32"
    images = random_images((1, 40, 56, 3))
    np.testing.assert_array_equal(predict_whole(back, images), predict_whole(model, images))


def test_bfloat16_probabilities_are_float32_and_agree_with_float32(model, bfloat16_model):
    images = random_images((2, 40, 56, 3), seed=3)
    reference = predict_whole(model, images)
    for probabilities in (
        predict_whole(bfloat16_model, images),
        predict_whole(model, images, precision="bfloat16"),
        predict_sliding(model, images, tile_size=32, precision="bfloat16"),
        predict_multiscale(model, images, scales=(0.75, 1.0), precision="bfloat16"),
    ):
        assert probabilities.dtype == np.float32 and probabilities.shape == reference.shape
        assert np.isfinite(probabilities).all()
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    bfloat16 = predict_whole(bfloat16_model, images)
    # precision="bfloat16" runs inference_model's copy: as_precision's, folded.
    np.testing.assert_array_equal(
        predict_whole(model, images, precision="bfloat16"),
        predict_whole(inference_model(model, "bfloat16"), images),
    )
    # bfloat16 keeps 8 bits of mantissa. The labels of a random tiny model agree at
    # ~99% of the pixels; its logits are large (probabilities near 0 and 1), so
    # where two classes are close a probability can move a lot.
    assert (bfloat16.argmax(-1) == reference.argmax(-1)).mean() > 0.95
    np.testing.assert_array_equal(predict_whole(model, images, precision="float32"), reference)


def test_nan_logits_are_refused_saying_why(model):
    # Their argmax is class 0 at every pixel: a plausible-looking prediction.
    from alignseg_keras.checks import first_non_finite_weight

    diverged = type(model).from_config(model.get_config())
    diverged.set_weights(model.get_weights())
    assert first_non_finite_weight(diverged) is None
    bias = next(w for w in diverged.weights if w.path == "head/classifier/bias")
    bias.assign(np.where(np.arange(bias.shape[0]) == 0, np.nan, 0.0).astype("float32"))
    assert first_non_finite_weight(diverged) == bias.path
    images = random_images((1, 24, 24, 3))
    message = rf"The model's logits hold \d+ NaN or \+infinite value\(s\) of \d+: its weight {bias.path}"
    for predict in (lambda m: predict_whole(m, images), lambda m: predict_sliding(m, images, 16),
                    lambda m: predict_multiscale(m, images, scales=(0.5, 1.0))):
        with pytest.raises(ValueError, match=message):
            predict(diverged)


class OverflowingModel:
    """Logits of which one is `value`, from finite weights (or from none: frozen)."""

    def __init__(self, weights, value=np.inf):
        self.weights, self.value = weights, value

    def predict_on_batch(self, images):
        logits = np.zeros(images.shape[:3] + (2,), "float32")
        logits[0, 0, 0, 0] = self.value
        return logits


def test_infinite_logits_of_finite_weights_are_said_to_overflow():
    images = random_images((1, 4, 4, 3))
    weights = [keras.Variable(np.ones(2, "float32"))]
    with pytest.raises(ValueError, match=r"hold 1 NaN or \+infinite value\(s\) of 32: its "
                                         r"weights are finite: the computation overflowed"):
        predict_whole(OverflowingModel(weights), images)
    with pytest.raises(ValueError, match="check the weights of the model it was made from"):
        predict_whole(OverflowingModel([]), images)
    # A class masked out with -inf has a probability of 0.
    probabilities = predict_whole(OverflowingModel(weights, value=-np.inf), images)
    assert probabilities[0, 0, 0].tolist() == [0.0, 1.0] and np.isfinite(probabilities).all()


@pytest.mark.parametrize("scales", [(np.inf,), (1.0, np.nan), ("1",), (None,), (), (0.5, -1)])
def test_scales_that_are_not_positive_finite_numbers_are_refused(scales):
    from alignseg_keras.inference import check_scales

    with pytest.raises(ValueError, match="`scales` must be positive finite numbers"):
        check_scales(scales)


def test_a_single_scale_may_be_given_as_a_number(pointwise_model):
    from alignseg_keras.inference import check_scales

    assert check_scales(1.5) == (1.5,) and check_scales([0.5, 2]) == (0.5, 2)
    images = random_images((1, 8, 8, 3))
    np.testing.assert_array_equal(predict_multiscale(pointwise_model, images, scales=1.0, flip=False),
                                  predict_whole(pointwise_model, images))
