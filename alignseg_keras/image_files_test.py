import numpy as np
import pytest
from PIL import Image

from alignseg_keras import visualize
from alignseg_keras.image_files import displayed_size
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


def test_sixteen_bit_gray_images_are_scaled_to_eight_bits(tmp_path):
    # The standard 8-to-16-bit expansion, v * 257, must read back as the 8-bit image.
    gray = np.random.default_rng(1).integers(0, 256, (9, 13)).astype("uint16")
    gray[0, :2] = (0, 255)
    Image.fromarray(gray * 257).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png"), np.stack([gray] * 3, -1))
    # Any 16-bit values as TensorFlow's decoder gives them (the `encoded` serving signatures).
    import tensorflow as tf

    values = np.random.default_rng(3).integers(0, 65536, (9, 13)).astype("uint16")
    Image.fromarray(values).save(tmp_path / "values16.png")
    decoded = tf.io.decode_png((tmp_path / "values16.png").read_bytes(), channels=3, dtype=tf.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "values16.png"), decoded.numpy())


def test_thirty_two_bit_images_outside_eight_bit_values_are_refused(tmp_path):
    small = np.arange(12, dtype="int32").reshape(3, 4) * 20
    Image.fromarray(small).save(tmp_path / "small.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "small.tif"), np.stack([small] * 3, -1))
    Image.fromarray(small.astype("float32") * 100).save(tmp_path / "depth.tif")
    with pytest.raises(ValueError, match=r"depth.tif' has Pillow mode 'F' .* from 0.0 to 22000.0"):
        read_image(tmp_path / "depth.tif")


def test_float_images_with_nan_or_in_zero_to_one_are_refused(tmp_path):
    # NaN pixels were read as black (Pillow's extrema skip NaN), and a float image in
    # [0, 1] as all black; the arrays the model is given directly were refused.
    with_nan = np.full((3, 4), 100, "float32")
    with_nan[1, 2] = np.nan
    Image.fromarray(with_nan).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=r"nan.tif' has Pillow mode 'F' .* with 1 NaN or infinite"):
        read_image(tmp_path / "nan.tif")
    Image.fromarray(np.linspace(0, 1, 12, dtype="float32").reshape(3, 4)).save(tmp_path / "unit.tif")
    with pytest.raises(ValueError, match=r"unit.tif' .* from 0.0 to 1.0: a float image in \[0, 1\]"):
        read_image(tmp_path / "unit.tif")
    for name, values in (("black", np.zeros((3, 4), "float32")),
                         ("colours", np.linspace(0, 255, 12, dtype="float32").reshape(3, 4))):
        Image.fromarray(values).save(tmp_path / f"{name}.tif")
        assert read_image(tmp_path / f"{name}.tif").shape == (3, 4, 3)


def _save_with_orientation(array, path, orientation, mode=None):
    picture = Image.fromarray(array, mode=mode)
    if mode == "P":
        picture.putpalette([value % 256 for value in range(768)])
    exif = picture.getexif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    picture.save(path, exif=exif.tobytes())


def test_images_and_label_maps_are_read_as_their_exif_orientation_shows_them(tmp_path):
    stored = np.random.default_rng(2).integers(0, 256, (4, 7, 3)).astype("uint8")
    # Orientation 6: the camera was turned; viewers rotate the stored pixels clockwise.
    _save_with_orientation(stored, tmp_path / "portrait.png", 6)
    np.testing.assert_array_equal(read_image(tmp_path / "portrait.png"), np.rot90(stored, -1))
    _save_with_orientation(stored, tmp_path / "mirrored.png", 2)  # mirrored left to right
    np.testing.assert_array_equal(read_image(tmp_path / "mirrored.png"), stored[:, ::-1])
    labels = np.arange(28, dtype="uint8").reshape(4, 7)
    _save_with_orientation(labels, tmp_path / "labels.png", 6, mode="P")
    np.testing.assert_array_equal(read_label_map(tmp_path / "labels.png"), np.rot90(labels, -1))


def _png_chunk(kind, data):
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_chunk_after_pixels(path, kind, data):
    """Rewrites the PNG `path` with a chunk inserted just before its IEND chunk (as
    tools that append metadata write it, after the image data)."""
    content = path.read_bytes()
    assert content[-12:-8] == b"\x00\x00\x00\x00" and content[-8:-4] == b"IEND"
    path.write_bytes(content[:-12] + _png_chunk(kind, data) + content[-12:])


def test_displayed_sizes_are_read_sizes_without_decoding_a_png(tmp_path, monkeypatch):
    from PIL import PngImagePlugin

    stored = np.zeros((4, 7, 3), "uint8")
    turning = Image.Exif()
    turning[0x0112] = 6
    _save_with_orientation(stored, tmp_path / "before.png", 6)  # Pillow: eXIf before IDAT
    Image.fromarray(stored).save(tmp_path / "exif_after.png")
    _with_chunk_after_pixels(tmp_path / "exif_after.png", b"eXIf", turning.tobytes())
    Image.fromarray(stored).save(tmp_path / "xmp_after.png")
    xmp = b'XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta tiff:Orientation="6"/>'
    _with_chunk_after_pixels(tmp_path / "xmp_after.png", b"iTXt", xmp)
    Image.fromarray(stored).save(tmp_path / "garbage.png", exif=b"garbage!")
    Image.fromarray(stored).save(tmp_path / "plain.png")
    _save_with_orientation(stored, tmp_path / "turned.jpg", 6)
    Image.fromarray(stored).save(tmp_path / "raw_profile_after.png")
    raw = turning.tobytes().hex()
    _with_chunk_after_pixels(tmp_path / "raw_profile_after.png", b"tEXt",
                             b"Raw profile type exif\x00\nexif\n  %d\n%s" % (len(raw) // 2, raw.encode()))
    Image.fromarray(stored).save(tmp_path / "dated.png")  # as ImageMagick appends its dates
    _with_chunk_after_pixels(tmp_path / "dated.png", b"tEXt", b"date:modify\x002026-12-07T14:00")
    expected = {"before.png": (7, 4), "exif_after.png": (7, 4), "xmp_after.png": (7, 4),
                "raw_profile_after.png": (7, 4), "dated.png": (4, 7),
                "garbage.png": (4, 7), "plain.png": (4, 7), "turned.jpg": (7, 4)}
    for name, size in expected.items():
        assert read_image(tmp_path / name).shape[:2] == size, name
        assert displayed_size(tmp_path / name) == size, name
    # The PNGs without metadata after their pixels are not decoded (Pillow's getexif would).
    def no_decoding(image):
        raise AssertionError(f"{image.filename} was decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    for name in ("before.png", "garbage.png", "plain.png", "dated.png"):
        assert displayed_size(tmp_path / name) == expected[name], name


def test_a_png_cut_short_is_named_by_its_size_check(tmp_path):
    # An interrupted copy: found by the header scan (its pixels are decoded to show it).
    picture = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype("uint8")
    Image.fromarray(picture).save(tmp_path / "whole.png")
    content = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(content[: len(content) // 2])
    assert displayed_size(tmp_path / "whole.png") == (64, 64)
    with pytest.raises(ValueError, match=r"Cannot read image file '.*cut.png'"):
        displayed_size(tmp_path / "cut.png")


def _png_header(path, width, height):
    """A PNG that declares `width x height` 8-bit gray pixels and holds almost no data."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b"")
    )


def test_a_raised_pixel_limit_lifts_pillows_own_limit_too(tmp_path):
    path = tmp_path / "huge.png"
    _png_header(path, 15000, 12000)  # 180 million pixels: beyond Pillow's 2 x 89.5 million
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="huge.png' has 180,000,000 pixels, more than the limit of 67,108,864"):
        read_image(path)
    with pytest.raises(ValueError, match="15000x12000 = 180,000,000 pixels, more than the limit of 179,999,999"):
        read_image(path, max_pixels=179_999_999)
    for no_or_higher_limit in (None, 0, 180_000_000):
        # Allowed, so it is decoded: and this file holds almost no pixel data.
        with pytest.raises(ValueError, match="Cannot read image file .*huge.png': .*truncated"):
            read_image(path, max_pixels=no_or_higher_limit)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_jpeg_label_files_are_refused(tmp_path):
    # A disc of class 2 on class 0: JPEG's compression puts ids 1 and 3 around its edge.
    rows, columns = np.mgrid[:64, :64]
    labels = np.where((rows - 30) ** 2 + (columns - 33) ** 2 < 15**2, 2, 0).astype("uint8")
    Image.fromarray(labels).save(tmp_path / "labels.jpg", quality=75)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "labels.jpg")))) - {0, 2}
    with pytest.raises(ValueError, match="labels.jpg' is a JPEG file: its lossy compression"):
        read_label_map(tmp_path / "labels.jpg")
    Image.fromarray(labels).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "labels.png"), labels)


def test_exif_data_that_cannot_be_parsed_leaves_the_pixels_as_stored(tmp_path):
    stored = np.random.default_rng(4).integers(0, 256, (4, 5, 3)).astype("uint8")
    Image.fromarray(stored).save(tmp_path / "odd_exif.png", exif=b"garbage!")
    np.testing.assert_array_equal(read_image(tmp_path / "odd_exif.png"), stored)
    Image.fromarray(stored[..., 0]).save(tmp_path / "odd_exif_labels.png", exif=b"garbage!")
    np.testing.assert_array_equal(read_label_map(tmp_path / "odd_exif_labels.png"), stored[..., 0])


def test_twelve_bit_data_in_sixteen_bit_files_is_warned_about(tmp_path, monkeypatch):
    import warnings

    from alignseg_keras import image_files

    monkeypatch.setattr(image_files, "_WARNED_OF_FEW_BITS", [])
    twelve_bit = (np.arange(12, dtype="uint16").reshape(3, 4) * 372)  # 0..4092
    Image.fromarray(twelve_bit).save(tmp_path / "scan.png")
    with pytest.warns(UserWarning, match=r"16-bit image file '.*scan.png' holds no value above "
                      r"4092 \(12-bit data\?\): it is read as its high byte, 0..15"):
        np.testing.assert_array_equal(read_image(tmp_path / "scan.png")[..., 0], twelve_bit >> 8)
    Image.fromarray(twelve_bit * 16).save(tmp_path / "scaled.png")  # as the message says
    Image.fromarray(twelve_bit * 0).save(tmp_path / "black.png")  # a black frame is no sign
    monkeypatch.setattr(image_files, "_WARNED_OF_FEW_BITS", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "scaled.png").max() == 4092 * 16 >> 8
        assert read_image(tmp_path / "black.png").max() == 0
    with pytest.warns(UserWarning, match="said once"):
        read_image(tmp_path / "scan.png")
    with warnings.catch_warnings():  # once a process, not for every file of a dataset
        warnings.simplefilter("error")
        read_image(tmp_path / "scan.png")
