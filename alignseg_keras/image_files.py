"""Reading image and label files into NumPy arrays with Pillow, with clear errors.

The one image reader of the library (`alignseg predict`, `visualize.load_image`
and the dataset readers of `alignseg_keras.data` use it). Backend-neutral: the
module itself needs NumPy and Pillow only, on every Keras backend.

Label maps are read with Pillow rather than `tf.io.decode_png` because
palette PNGs (Pascal VOC style) must yield their palette indices, not the
palette colors, and because every error here can name the file it concerns.
An image of more than `MAX_PIXELS` pixels is refused from its header, before
it is decoded. Files are read as they are displayed: an EXIF orientation (how
cameras and phones store portrait photos) is applied, as OpenCV's `imread`,
which the authors' code reads with, and every image viewer apply it.
"""

import os
import re
import threading

import numpy as np
from PIL import Image
from PIL import ImageOps

# Pillow modes that hold one class id per pixel.
LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
# Pillow's formats whose compression changes pixel values: refused for label files.
LOSSY_FORMATS = ("JPEG", "MPO")
# Pillow's errors for files it cannot read.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# Images with more pixels are refused before they are decoded (8192 x 8192): a small
# compressed file can decode to gigabytes.
MAX_PIXELS = 8192 * 8192
# Pillow modes of 16-bit single-channel images.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Pillow's own limit (`Image.MAX_IMAGE_PIXELS`) is a process-wide setting: it is lifted
# for one `Image.open` at a time, where the caller's limit is higher.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _too_large(description, path, size, max_pixels):
    return ValueError(
        f"{description.capitalize()} '{path}' has {size}, more than the limit of "
        f"{max_pixels:,} pixels; it was not decoded. Resize it, or raise the limit "
        "(`max_pixels`, `alignseg predict --max-pixels`)."
    )


def _open_with_limit(path, max_pixels):
    """`Image.open`, whose own decompression-bomb check never refuses what
    `max_pixels` allows (None or 0: no limit); ours is checked after it."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is None or (max_pixels and max_pixels <= pillow_limit):
        return Image.open(path)
    with _PILLOW_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit


def _open(path, description, max_pixels=MAX_PIXELS):
    """Opens and decodes an image file, refusing one of more than `max_pixels` pixels
    (checked on the header, before decoding), and turns it as its EXIF
    orientation says."""
    if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
        raise FileNotFoundError(f"No such {description}: '{path}'.")
    try:
        image = _open_with_limit(path, max_pixels)
    except Image.DecompressionBombError as error:  # beyond Pillow's own, higher limit
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        raise _too_large(description, path, size, max_pixels) from None
    except UNREADABLE as error:
        raise ValueError(f"Cannot read {description} '{path}': {error}") from None
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        image.close()
        size = f"{width}x{height} = {width * height:,} pixels"
        raise _too_large(description, path, size, max_pixels)
    try:
        image.load()
    except UNREADABLE as error:
        image.close()
        raise ValueError(f"Cannot read {description} '{path}': {error}") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except UNREADABLE:
        pass  # EXIF data that cannot be parsed: the pixels as stored, as viewers show them
    return image


# The largest value of 12-bit data (microscopes, medical and thermal cameras), which
# 16-bit files often hold: their high byte is 0..15.
TWELVE_BIT_MAX = 4095


# Whether `_warn_of_few_bits` has warned in this process: once, not for every file of a dataset.
_WARNED_OF_FEW_BITS = []


def _warn_of_few_bits(path, largest):
    import warnings

    if _WARNED_OF_FEW_BITS:
        return
    _WARNED_OF_FEW_BITS.append(path)
    warnings.warn(
        f"The 16-bit image file '{path}' holds no value above {largest} (12-bit data?): "
        f"it is read as its high byte, 0..{largest >> 8}, nearly black. Scale such files "
        "to the 16-bit range (12-bit values times 16) or convert them to 8 bits first "
        "(said once: other such files are not named).", stacklevel=4)


def _as_rgb(image, path):
    """uint8 RGB `(H, W, 3)` of an opened image. 16-bit single-channel images keep
    their high byte (`v >> 8`, as TensorFlow's PNG decoder, which the exported
    `encoded` signatures use, gives them); 32-bit ones (Pillow modes "I", "F") are
    taken as they are when their values lie in [0, 255] and refused otherwise, as
    their scale is unknown."""
    if image.mode in SIXTEEN_BIT_MODES:
        stored = np.asarray(image).astype(np.uint16)
        if stored.size and 0 < stored.max() <= TWELVE_BIT_MAX:  # not a black frame
            _warn_of_few_bits(path, int(stored.max()))
        gray = (stored >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("I", "F"):
        _check_32_bit_values(np.asarray(image), image.mode, path)
    return np.asarray(image.convert("RGB"))


def _check_32_bit_values(values, mode, path):
    """Refuses a 32-bit image whose values are not 0..255 colours: out of that range,
    NaN or infinite (Pillow's extrema skip NaN, and the conversion made them black),
    or floats all in [0, 1] (a float image's usual scale: made all black)."""
    stored = f"Image file '{path}' has Pillow mode {mode!r} (one 32-bit channel)"
    advice = "Convert it to an 8-bit image (values 0..255)."
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(f"{stored} with {finite.size - np.count_nonzero(finite)} NaN or "
                         f"infinite value(s). {advice}")
    if not values.size:
        return
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise ValueError(f"{stored} with values from {low} to {high}; expected 8-bit or 16-bit "
                         f"images, or values in [0, 255]. {advice}")
    if mode == "F" and 0 < high <= 1:
        raise ValueError(f"{stored} with values from {low} to {high}: a float image in [0, 1], "
                         f"which read as 0..255 would be black. {advice}")


# EXIF orientations that turn an image by 90 degrees (its displayed height is its width).
_TURNING_ORIENTATIONS = (5, 6, 7, 8)


def displayed_size(path):
    """`(height, width)` of an image or label file as `read_image` and `read_label_map`
    give it (EXIF orientation applied), from its header alone; a `ValueError` naming
    the file when it cannot be opened as an image.

    Example:
    ```python
    displayed_size("frame_1.jpg")  # (1024, 2048)
    ```
    """
    try:
        (width, height), turned = _stored_size_and_turn(path)
    except (*UNREADABLE, Image.DecompressionBombError) as error:
        raise ValueError(f"Cannot read image file '{path}': {error}") from None
    return (width, height) if turned else (height, width)


def _stored_size_and_turn(path):
    """`((width, height), turned)` of an image file as stored, from its header; `turned`:
    whether its EXIF orientation turns it by 90 degrees."""
    with _open_with_limit(path, None) as image:
        return image.size, _exif_orientation(image, path) in _TURNING_ORIENTATIONS


def turning_note(path, description):
    """" The EXIF orientation of DESCRIPTION 'PATH' turns it (stored HxW)." where the
    file's EXIF orientation turns it by 90 degrees, else "": the size most tools report
    is the stored one, for the messages of sizes that differ."""
    try:
        (width, height), turned = _stored_size_and_turn(path)
    except (*UNREADABLE, Image.DecompressionBombError):
        return ""
    if not turned:
        return ""
    return (f" The EXIF orientation of {description} '{path}' turns it by 90 degrees (stored "
            f"{height}x{width}, the size most tools report): turn the other file too, or "
            "remove the orientation.")


def _exif_orientation(image, path):
    """The EXIF orientation that `_open`'s `exif_transpose` applies to `image` (opened,
    not decoded), or None, decoding no pixel where Pillow need not: a PNG's `getexif`
    decodes the whole image to look for metadata after the pixel data (29 ms for a
    2048x1024 RGB PNG), whereas what comes before it was read when it was opened. A PNG
    whose chunks end before its last (a copy cut short) is decoded, so that its error
    is raised. EXIF data that cannot be parsed is no orientation, as in `_open`."""
    read_exif = type(image).getexif
    if image.format == "PNG":
        if _png_metadata_after_pixels(path):
            image.load()  # the decoding error of a truncated file, not swallowed below
        else:
            read_exif = Image.Image.getexif  # Pillow's own, less PNG's decoding
    try:
        return read_exif(image).get(0x0112)
    except UNREADABLE:
        return None


# The keywords of PNG text chunks from which Pillow's `getexif` reads an orientation (EXIF
# data as hexadecimal text, XMP's tiff:Orientation).
_PNG_ORIENTATION_KEYWORDS = (b"Raw profile type exif", b"XML:com.adobe.xmp", b"exif")


def _png_metadata_after_pixels(path):
    """Whether a PNG file has, after its first image data chunk, an eXIf chunk or a text
    chunk of `_PNG_ORIENTATION_KEYWORDS` (not the dates and comments that tools append),
    or ends before its IEND chunk, or cannot be walked: then Pillow decides. From the
    chunks' headers and the text chunks' keywords alone."""
    import struct

    try:
        with open(path, "rb", buffering=0) as file:
            file.seek(8)  # the signature
            pixels_seen = False
            while True:
                header = file.read(8)
                if len(header) < 8:
                    return True
                length, kind = struct.unpack(">I4s", header)
                if kind == b"IEND":
                    return False
                read = 0
                if kind == b"IDAT":
                    pixels_seen = True
                elif pixels_seen and kind == b"eXIf":
                    return True
                elif pixels_seen and kind in (b"tEXt", b"zTXt", b"iTXt"):
                    start = file.read(min(length, 80))
                    read = len(start)
                    if start.split(b"\0", 1)[0] in _PNG_ORIENTATION_KEYWORDS:
                        return True
                file.seek(length - read + 4, os.SEEK_CUR)  # the rest of the data, its CRC
    except (OSError, TypeError):  # not a file on disk
        return True


def read_image(path, max_pixels=MAX_PIXELS):
    """Reads an image file (PNG, JPEG, ...) as uint8 RGB `(H, W, 3)`, as it is displayed.

    An EXIF orientation is applied; gray images become three equal channels,
    16-bit ones reduced to their high byte; an alpha channel is dropped. Raises a
    `FileNotFoundError` when the file does not exist, and a `ValueError`
    naming the file when it cannot be read, is a 32-bit image with values
    outside [0, 255], or has more than `max_pixels` pixels (checked on its
    header, before decoding; None or 0: no limit, not even Pillow's own).

    Example:
    ```python
    image = read_image("leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png")
    ```
    """
    with _open(path, "image file", max_pixels) as image:
        return _as_rgb(image, path)


def read_label_map(path):
    """Reads a single-channel label file (8-bit, palette or 16-bit PNG) as an
    integer array `(H, W)` of the stored values (palette indices for palette PNGs),
    turned as its EXIF orientation says, like its image. Color images and JPEG
    files (whose compression invents class ids at edges) are refused.

    Example:
    ```python
    label_ids = read_label_map("gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png")
    ```
    """
    with _open(path, "label file") as label:
        if label.format in LOSSY_FORMATS:
            raise ValueError(
                f"Label file '{path}' is a {label.format} file: its lossy compression changes "
                "class ids near every edge (into ids of other classes, silently). Store label "
                "files as PNG."
            )
        if label.mode not in LABEL_MODES:
            raise ValueError(
                f"Label file '{path}' has Pillow mode {label.mode!r} "
                f"({len(label.getbands())} channel(s)); expected one class id per pixel "
                "(an 8-bit, palette or 16-bit single-channel PNG), not a color image."
            )
        return np.asarray(label).astype(np.int64)
