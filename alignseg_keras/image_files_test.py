import numpy as np
import pytest
from PIL import Image

from alignseg_keras import visualize
from alignseg_keras.image_files import read_image
from alignseg_keras.image_files import read_label_map


def test_one_reader_with_clear_errors_and_the_pixel_limit(tmp_path):
    path = tmp_path / "picture.png"
    picture = np.random.default_rng(0).integers(0, 256, (40, 56, 3)).astype("uint8")
    Image.fromarray(picture).save(path)
    assert visualize.load_image is read_image  # one reader
    np.testing.assert_array_equal(read_image(path), picture)
    with pytest.raises(ValueError, match="picture.png' has 56x40 = 2,240 pixels"):
        read_image(path, max_pixels=2000)
    assert read_image(path, max_pixels=2240).shape == (40, 56, 3)
    assert read_image(path, max_pixels=None).shape == (40, 56, 3)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="Cannot read image file .*notes.png"):
        read_image(tmp_path / "notes.png")


def test_label_maps_keep_palette_indices_and_refuse_color_images(tmp_path):
    indices = np.array([[0, 1], [2, 1]], "uint8")
    label = Image.fromarray(indices, mode="P")
    label.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    label.save(tmp_path / "label.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "label.png"), indices)
    Image.fromarray(np.zeros((2, 2, 3), "uint8")).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a color image"):
        read_label_map(tmp_path / "rgb.png")
