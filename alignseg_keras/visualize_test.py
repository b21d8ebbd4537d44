import types

import numpy as np
import pytest

from alignseg_keras.visualize import ade20k_palette
from alignseg_keras.visualize import cityscapes_palette
from alignseg_keras.visualize import colorize_labels
from alignseg_keras.visualize import flow_to_color
from alignseg_keras.visualize import generated_palette
from alignseg_keras.visualize import get_palette
from alignseg_keras.visualize import load_image
from alignseg_keras.visualize import offset_images
from alignseg_keras.visualize import overlay
from alignseg_keras.visualize import save_png
from alignseg_keras.visualize import train_ids_to_label_ids
from alignseg_keras.testing import tiny_alignseg


def distinct_rows(array):
    return len(np.unique(array, axis=0)) == len(array)


def test_dataset_palettes():
    cityscapes = cityscapes_palette()
    assert cityscapes.shape == (19, 3) and cityscapes.dtype == np.uint8
    assert cityscapes[0].tolist() == [128, 64, 128]  # road
    assert cityscapes[13].tolist() == [0, 0, 142]  # car
    assert distinct_rows(cityscapes)
    ade20k = ade20k_palette()
    assert ade20k.shape == (150, 3) and ade20k.dtype == np.uint8
    assert ade20k[0].tolist() == [120, 120, 120]  # wall


def test_generated_palette_is_deterministic_distinct_and_never_black():
    palette = generated_palette(1000)
    assert palette.shape == (1000, 3) and palette.dtype == np.uint8
    assert distinct_rows(palette)
    assert (palette.max(axis=1) > 0).all()
    np.testing.assert_array_equal(generated_palette(7), palette[:7])
    with pytest.raises(ValueError, match="num_classes"):
        generated_palette(0)


def test_get_palette_auto_follows_the_number_of_classes():
    np.testing.assert_array_equal(get_palette("auto", 19), cityscapes_palette())
    np.testing.assert_array_equal(get_palette("auto", 150), ade20k_palette())
    np.testing.assert_array_equal(get_palette("auto", 5), generated_palette(5))
    with pytest.raises(ValueError, match="too few"):
        get_palette("cityscapes", 21)
    with pytest.raises(ValueError, match="Unknown palette 'voc'"):
        get_palette("voc", 21)


def test_colorize_labels_draws_ignored_pixels_black():
    palette = generated_palette(3)
    labels = np.array([[0, 1], [2, 255]])
    colors = colorize_labels(labels, palette)
    assert colors.shape == (2, 2, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[0, 1], palette[1])
    np.testing.assert_array_equal(colors[1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="contains 3"):
        colorize_labels(np.array([[3]]), palette)
    # An ignore label the palette has a color for is black too, unless it is a class.
    np.testing.assert_array_equal(colorize_labels(labels[:1], palette, ignore_index=1)[0, 1], [0, 0, 0])
    large = generated_palette(300)
    np.testing.assert_array_equal(colorize_labels(labels, large)[1, 1], [0, 0, 0])
    np.testing.assert_array_equal(colorize_labels(labels, large, ignore_index=None)[1, 1], large[255])
    with pytest.raises(ValueError, match="integers"):
        colorize_labels(np.array([[0.5]]), palette)


def test_overlay_blends_and_keeps_ignored_pixels():
    image = np.full((2, 2, 3), 100, "uint8")
    labels = np.array([[0, 1], [1, 255]])
    palette = np.array([[200, 0, 0], [0, 200, 0]], "uint8")
    np.testing.assert_array_equal(overlay(image, labels, palette, alpha=0.0), image)
    blended = overlay(image, labels, palette, alpha=0.5)
    np.testing.assert_array_equal(blended[0, 0], [150, 50, 50])
    np.testing.assert_array_equal(blended[1, 1], [100, 100, 100])
    with pytest.raises(ValueError, match="same size"):
        overlay(image, labels[:1], palette)


def test_flow_to_color_follows_the_middlebury_wheel():
    assert flow_to_color(np.zeros((3, 4, 2))).tolist() == np.full((3, 4, 3), 255).tolist()
    # (dy, dx): right, down, left, up, each of length 1.
    field = np.array([[[0, 1], [1, 0], [0, -1], [-1, 0]]], "float32")
    right, down, left, up = flow_to_color(field)[0]
    assert right.tolist() == [255, 0, 0]  # red
    assert down[0] == 255 and down[1] > 200 and down[2] == 0  # yellow
    assert left[0] == 0 and left[1] > 200 and left[2] == 255  # cyan
    assert up[0] < 100 and up[1] == 0 and up[2] == 255  # blue-violet


def test_flow_to_color_normalises_by_the_longest_or_a_given_magnitude():
    field = np.random.default_rng(0).normal(size=(5, 6, 2)).astype("float32")
    np.testing.assert_array_equal(flow_to_color(field), flow_to_color(10 * field))
    short = flow_to_color(np.array([[[0, 0.5]]]), max_magnitude=1.0)[0, 0]
    full = flow_to_color(np.array([[[0, 1.0]]]), max_magnitude=1.0)[0, 0]
    beyond = flow_to_color(np.array([[[0, 2.0]]]), max_magnitude=1.0)[0, 0]
    assert short[1] > full[1] and short[2] > full[2]  # paler
    assert beyond[0] < full[0]  # darker
    with pytest.raises(ValueError, match=r"\(dy, dx\)"):
        flow_to_color(np.zeros((4, 4, 3)))


class FixedOffsetModel:
    """Stands in for AlignSeg: a constant offset field for one module."""

    def __init__(self, field, alignment):
        self.field = np.asarray(field, "float32")
        self.backbone = types.SimpleNamespace(alignment=alignment)
        self.pad_to_multiple = None
        self.offset_outputs = {"align_cm": self.field[None]}

    def offset_model(self):
        return lambda images, training: {"align_cm": self.field[None]}


def test_offset_images_read_the_alignment_convention():
    # One pixel to the right: standard (dy, dx) = (0, 1); official (dx, dy)
    # in half pixels = (2, 0). The right half moves, the left half stays.
    standard = np.zeros((4, 4, 2), "float32")
    standard[:, 2:, 1] = 1.0
    official = np.zeros((4, 4, 2), "float32")
    official[:, 2:, 0] = 2.0
    image = np.zeros((8, 8, 3), "uint8")
    expected = offset_images(FixedOffsetModel(standard, "standard"), image)["align_cm"]
    assert expected.shape == (8, 8, 3)
    np.testing.assert_array_equal(expected[:, :4], 255)
    np.testing.assert_array_equal(expected[:, 4:], np.broadcast_to([255, 0, 0], (8, 4, 3)))
    np.testing.assert_array_equal(
        offset_images(FixedOffsetModel(official, "official"), image)["align_cm"], expected
    )


def test_offset_images_of_an_alignseg_model():
    model = tiny_alignseg(num_classes=3, seed=None)
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3)).astype("uint8")
    pictures = offset_images(model, image, separator=2)
    assert set(pictures) == {"align_fa2", "align_fa3", "align_fa4", "align_fa5", "align_cm"}
    for name, picture in pictures.items():
        width = 52 if name == "align_cm" else 2 * 52 + 2
        assert picture.shape == (40, width, 3) and picture.dtype == np.uint8


def test_train_ids_to_label_ids():
    labels = np.array([[0, 13, 18, 255]])
    np.testing.assert_array_equal(train_ids_to_label_ids(labels), [[7, 26, 33, 0]])
    with pytest.raises(ValueError, match="contains 19"):
        train_ids_to_label_ids(np.array([[19]]))


def test_png_round_trip_and_clear_errors(tmp_path):
    picture = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype("uint8")
    save_png(tmp_path / "nested" / "picture.png", picture)
    np.testing.assert_array_equal(load_image(tmp_path / "nested" / "picture.png"), picture)
    gray = np.arange(12, dtype="uint8").reshape(3, 4)
    save_png(tmp_path / "gray.png", gray)
    assert load_image(tmp_path / "gray.png").shape == (3, 4, 3)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "float.png", picture.astype("float32"))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_titled_adds_a_band_with_text_and_keeps_the_picture():
    from alignseg_keras.visualize import titled

    picture = np.full((20, 120, 3), 7, np.uint8)
    out = titled(picture, "Prediction")
    assert out.dtype == np.uint8 and out.shape[1] == 120 and out.shape[0] > 20
    np.testing.assert_array_equal(out[-20:], picture)
    band = out[:-20]
    assert (band < 128).any() and (band == 255).mean() > 0.5  # dark text on white
    # A long title wraps into more lines, a narrower picture into even more.
    long = "AlignFA5 offsets Delta_F (colour = direction, saturation = length)"
    assert titled(picture, long).shape[0] > out.shape[0]
    assert titled(picture[:, :60], long).shape[0] > titled(picture, long).shape[0]
    with pytest.raises(ValueError, match="picture"):
        titled(np.zeros((4, 4), np.uint8), "x")


def test_legend_draws_each_color_and_wraps_to_the_width():
    from alignseg_keras.visualize import legend

    names = ["road", "sidewalk", "pole", "car"]
    colors = np.array([[128, 64, 128], [244, 35, 232], [153, 153, 153], [0, 0, 142]], np.uint8)
    wide = legend(names, colors, 600)
    assert wide.dtype == np.uint8 and wide.shape[1] == 600
    for color in colors:
        assert (wide == color).all(-1).sum() >= 25, color  # a swatch of each class
    narrow = legend(names, colors, 90)
    assert narrow.shape[1] == 90 and narrow.shape[0] > wide.shape[0]
    with pytest.raises(ValueError, match="colors"):
        legend(names, colors[:2], 600)


def test_offset_key_decodes_directions_like_flow_to_color():
    from alignseg_keras.visualize import offset_key

    key = offset_key(65)
    assert key.shape == (65, 65, 3) and key.dtype == np.uint8
    assert (key[0, 0] == 255).all()  # white outside the disk
    assert (key[32, 32] >= 250).all()  # no displacement in the centre: white
    # The right edge is the color of a displacement to the right, the top one upwards.
    right = flow_to_color(np.array([[[0.0, 1.0]]], np.float32), 1.0)[0, 0]
    up = flow_to_color(np.array([[[-1.0, 0.0]]], np.float32), 1.0)[0, 0]
    assert np.abs(key[32, 63].astype(int) - right).max() <= 24
    assert np.abs(key[1, 32].astype(int) - up).max() <= 24


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_flow_to_color_names_non_finite_offsets(value):
    field = np.zeros((2, 2, 2))
    field[1, 1, 0] = value  # of diverging weights: an IndexError inside NumPy, or a max_magnitude message
    with pytest.raises(ValueError, match=r"`offsets` hold 1 NaN or infinite value\(s\)"):
        flow_to_color(field)


def test_flow_to_color_of_huge_float32_offsets_is_not_white():
    field = np.array([[[0.0, 3e19], [0.0, 0.0]]], "float32")  # its square overflows float32
    np.testing.assert_array_equal(flow_to_color(field), flow_to_color(field / 1e19))
