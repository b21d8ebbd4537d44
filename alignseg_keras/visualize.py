"""Pictures of segmentations and offset fields, with NumPy and Pillow.

Label maps become color images with a palette (`colorize_labels`, `overlay`);
offset fields become Middlebury color-wheel pictures (`flow_to_color`, the
visualisation of the paper's Fig. 1), where hue is the direction and
saturation the magnitude of the displacement; `offset_images` draws every
alignment module of an `AlignSeg` model. Only `offset_images` runs a model;
everything else works on NumPy arrays and can be used in notebooks.

Example:
```python
image = load_image("frankfurt_000000_000294_leftImg8bit.png")
labels = predict_whole(model, image).argmax(-1)
save_png("labels.png", colorize_labels(labels, cityscapes_palette()))
save_png("overlay.png", overlay(image, labels, cityscapes_palette()))
for name, picture in offset_images(model, image).items():
    save_png(f"offsets_{name}.png", picture)
```
"""

import math
import pathlib
import weakref

import numpy as np
from PIL import Image

from alignseg_keras.checks import onednn_weights_frozen
from alignseg_keras.datasets_info import ADE20K_COLORS
from alignseg_keras.datasets_info import ADE20K_NUM_CLASSES
from alignseg_keras.datasets_info import CITYSCAPES_COLORS
from alignseg_keras.datasets_info import LABEL_ID_TO_TRAIN_ID
from alignseg_keras.image_files import read_image

# Middlebury color wheel (Baker et al., "A Database and Evaluation Methodology
# for Optical Flow", 2011): hue segments and their number of steps.
_WHEEL_SEGMENTS = (
    ("red", "yellow", 15),
    ("yellow", "green", 6),
    ("green", "cyan", 4),
    ("cyan", "blue", 11),
    ("blue", "magenta", 13),
    ("magenta", "red", 6),
)
_WHEEL_ANCHORS = {
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
PALETTES = ("cityscapes", "ade20k", "auto")


def cityscapes_palette():
    """The official colors of Cityscapes' 19 train ids, uint8 `(19, 3)`.

    Example:
    ```python
    cityscapes_palette()[0]  # road: [128, 64, 128]
    ```
    """
    return np.array(CITYSCAPES_COLORS, "uint8")


def ade20k_palette():
    """The ADE20K colors of its 150 classes (label k - 1), uint8 `(150, 3)`.

    Example:
    ```python
    ade20k_palette()[0]  # wall: [120, 120, 120]
    ```
    """
    return np.array(ADE20K_COLORS, "uint8")


def generated_palette(num_classes):
    """Deterministic, distinct, non-black colors for any number of classes.

    Class k gets the PASCAL VOC color of k + 1: the bits of k + 1 are spread
    over the high bits of red, green and blue, so colors never repeat
    (up to 2**24 - 1 classes) and black stays free for ignored pixels.

    Example:
    ```python
    generated_palette(3)  # [[128, 0, 0], [0, 128, 0], [128, 128, 0]]
    ```
    """
    if int(num_classes) != num_classes or not 1 <= num_classes < 2**24:
        raise ValueError(
            f"`num_classes` must be an int in [1, 2**24); received {num_classes!r}."
        )
    ids = np.arange(1, int(num_classes) + 1)
    palette = np.zeros((len(ids), 3), "int64")
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype("uint8")


def get_palette(name, num_classes):
    """The palette called `name` for a model with `num_classes` classes.

    Args:
        name: `"cityscapes"`, `"ade20k"` or `"auto"` (Cityscapes for 19
            classes, ADE20K for 150, else `generated_palette`).
        num_classes: int, number of classes the palette must cover.

    Example:
    ```python
    palette = get_palette("auto", model.num_classes)
    ```
    """
    if name == "auto":
        if num_classes == len(CITYSCAPES_COLORS):
            return cityscapes_palette()
        return ade20k_palette() if num_classes == ADE20K_NUM_CLASSES else generated_palette(num_classes)
    palettes = {"cityscapes": cityscapes_palette, "ade20k": ade20k_palette}
    if name not in palettes:
        raise ValueError(f"Unknown palette {name!r}; choose one of {PALETTES}.")
    palette = palettes[name]()
    if len(palette) < num_classes:
        raise ValueError(
            f"The {name} palette has {len(palette)} colors, too few for "
            f"{num_classes} classes; use --palette auto."
        )
    return palette


def _check_labels(labels, palette, ignore_index):
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be integers; received dtype {labels.dtype}.")
    unknown = (labels < 0) | (labels >= len(palette))
    if ignore_index is not None:
        unknown &= labels != ignore_index
    if unknown.any():
        raise ValueError(
            f"`labels` contains {labels[unknown].flat[0]}, outside the palette's "
            f"{len(palette)} classes (ignore_index={ignore_index})."
        )
    return labels


def colorize_labels(labels, palette, ignore_index=255):
    """Colors a label map: uint8 RGB `(..., 3)`, black where `ignore_index`.

    Args:
        labels: integer array of class indices, any shape (e.g. `(H, W)`).
        palette: `(num_classes, 3)` uint8 colors.
        ignore_index: int or None, label drawn black, also where the palette
            has a color of that index (None: every label is a class).

    Example:
    ```python
    colors = colorize_labels(labels, cityscapes_palette())  # (H, W, 3) uint8
    ```
    """
    palette = np.asarray(palette, "uint8")
    labels = _check_labels(labels, palette, ignore_index)
    known = (labels >= 0) & (labels < len(palette))
    if ignore_index is not None:  # also where the palette has a color for it
        known &= labels != ignore_index
    colors = palette[np.where(known, labels, 0)]
    colors[~known] = 0
    return colors


def overlay(image, labels, palette, alpha=0.5, ignore_index=255):
    """Blends label colors over an image: `(1 - alpha) * image + alpha * color`.

    Ignored pixels keep the image's own color.

    Args:
        image: `(H, W, 3)` RGB image, 0..255.
        labels: `(H, W)` integer label map.
        palette: `(num_classes, 3)` uint8 colors.
        alpha: float in [0, 1], opacity of the labels.
        ignore_index: int or None, label left uncolored.

    Example:
    ```python
    picture = overlay(image, labels, cityscapes_palette(), alpha=0.6)
    ```
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != labels.shape:
        raise ValueError(
            "`image` must be (H, W, 3) and `labels` (H, W) of the same size; "
            f"received {image.shape} and {labels.shape}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; received {alpha!r}.")
    colors = colorize_labels(labels, palette, ignore_index).astype("float32")
    blended = (1.0 - alpha) * image.astype("float32") + alpha * colors
    if ignore_index is not None:
        blended[labels == ignore_index] = image[labels == ignore_index]
    return np.clip(np.round(blended), 0, 255).astype("uint8")


def _color_wheel():
    """The 55 Middlebury wheel colors, float `(55, 3)` in 0..255."""
    steps = []
    for start, end, count in _WHEEL_SEGMENTS:
        start, end = np.array(_WHEEL_ANCHORS[start]), np.array(_WHEEL_ANCHORS[end])
        ramp = np.floor(255 * np.arange(count) / count)
        steps.append(start + ramp[:, None] * ((end - start) // 255))
    return np.concatenate(steps).astype("float32")


def flow_to_color(offsets, max_magnitude=None):
    """Middlebury color-wheel picture of a displacement field, uint8 `(H, W, 3)`.

    The hue gives the direction (right red, down yellow, left cyan, up blue)
    and the saturation the length: white is no displacement, full color a
    displacement of `max_magnitude`; longer ones are drawn darker.

    Args:
        offsets: `(H, W, 2)` float array of displacements `(dy, dx)`.
        max_magnitude: float or None; None normalises by the longest
            displacement of the field.

    Example:
    ```python
    picture = flow_to_color(np.stack([dy, dx], axis=-1))
    ```
    """
    offsets = np.asarray(offsets, "float64")  # squares of float32 offsets above 1.8e19 overflow
    if offsets.ndim != 3 or offsets.shape[-1] != 2:
        raise ValueError(
            f"`offsets` must have shape (height, width, 2) as (dy, dx); received {offsets.shape}."
        )
    if not np.isfinite(offsets).all():
        raise ValueError(f"`offsets` hold {int((~np.isfinite(offsets)).sum())} NaN or infinite "
                         "value(s): there is no direction to draw.")
    if max_magnitude is None:
        max_magnitude = float(np.sqrt((offsets**2).sum(-1)).max())
    if not max_magnitude >= 0:
        raise ValueError(f"`max_magnitude` must be >= 0; received {max_magnitude!r}.")
    dy, dx = np.moveaxis(offsets, -1, 0) / (max_magnitude + 1e-5)
    wheel = _color_wheel()
    position = (np.arctan2(-dy, -dx) / np.pi + 1.0) / 2.0 * (len(wheel) - 1)
    lower = np.floor(position).astype("int64")
    upper = (lower + 1) % len(wheel)
    fraction = (position - lower)[..., None]
    color = ((1.0 - fraction) * wheel[lower] + fraction * wheel[upper]) / 255.0
    radius = np.sqrt(dy**2 + dx**2)[..., None]
    color = np.where(radius <= 1.0, 1.0 - radius * (1.0 - color), color * 0.75)
    return np.floor(255.0 * color).astype("uint8")


def _fields_in_pixels(field, alignment):
    """Splits a module's offset channels into `(dy, dx)` fields in pixels.

    `"standard"` offsets are `(dy, dx)` in output pixels already; `"official"`
    offsets are `(dx, dy)` in half pixels of the sampled map.
    """
    fields = []
    for start in range(0, field.shape[-1], 2):
        pair = field[..., start : start + 2]
        if alignment == "official":
            pair = pair[..., ::-1] / 2.0
        fields.append(pair)
    return fields


def _image_area(field, image_shape, pad_to_multiple):
    """Crops a field of the padded input to the part that covers the image."""
    keep = []
    for axis, size in enumerate(image_shape[:2]):
        padded = -(-size // pad_to_multiple) * pad_to_multiple if pad_to_multiple else size
        keep.append(min(field.shape[axis], math.ceil(field.shape[axis] * size / padded)))
    return field[: keep[0], : keep[1]]


def _resize_nearest(picture, height, width):
    return np.asarray(Image.fromarray(picture).resize((width, height), Image.NEAREST))


def offset_images(model, image, max_magnitude=None, separator=4):
    """Color-wheel pictures of the offset fields of every alignment module.

    Runs `model.offset_model()` on one image, converts each field to `(dy,
    dx)` in pixels following `model.backbone.alignment` (standard: output pixels;
    official: half pixels of the sampled map, halved), crops it to the image
    area and scales it to the image size (nearest neighbour), then draws it
    with `flow_to_color`. An AlignFA picture shows its two fields side by
    side, Delta_F (for the upsampled low-resolution stream) on the left and
    Delta_A (for the high-resolution stream) on the right, with a white gap.

    Args:
        model: an `AlignSeg` model.
        image: `(H, W, 3)` RGB image, 0..255.
        max_magnitude: float or None; None normalises each field by its own
            longest offset, so that its directions are visible.
        separator: int, width in pixels of the white gap between fields.

    Returns:
        dict from module name (`align_fa2`, ..., `align_cm`) to uint8 RGB
        pictures `(H, W, 3)` (AlignCM) or `(H, 2 W + separator, 3)` (AlignFA).
        Ablated models draw only their alignment modules (an AlignFA that
        aligns one side, one field `(H, W, 3)`); none, an empty dict.

    Example:
    ```python
    pictures = offset_images(model, image)
    save_png("align_fa5.png", pictures["align_fa5"])
    ```
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must have shape (height, width, 3); received {image.shape}.")
    height, width = image.shape[:2]
    if not model.offset_outputs:
        return {}
    import keras

    outputs = _offset_fields(model, image[None].astype("float32"))
    gap = np.full((height, separator, 3), 255, "uint8")
    pictures = {}
    for name, field in outputs.items():
        # convert_to_numpy: a torch output that requires grad refuses np.asarray.
        field = keras.ops.convert_to_numpy(field)[0]
        field = _image_area(field, image.shape, model.pad_to_multiple)
        drawn = [
            _resize_nearest(flow_to_color(pair, max_magnitude), height, width)
            for pair in _fields_in_pixels(field, model.backbone.alignment)
        ]
        parts = [drawn[0]]
        for picture in drawn[1:]:
            parts += [gap, picture]
        pictures[name] = np.concatenate(parts, axis=1)
    return pictures


# The compiled offset model of each model (`_offset_fields`), traced once per image size.
_COMPILED_OFFSET_MODELS = weakref.WeakKeyDictionary()


def _offset_fields(model, images):
    """`model.offset_model()`'s fields for `images`: an eager call, or where TensorFlow
    freezes oneDNN kernels (`alignseg predict` and `evaluate` set it for their process)
    Keras' compiled `predict_on_batch`: the eager convolutions there reuse the kernels of
    earlier ones, and gave offsets off by 18-84% of each field's largest value
    (`checks.check_compiled_call`)."""
    import keras

    if not onednn_weights_frozen(keras.backend.backend()):
        return model.offset_model()(images, training=False)
    offsets = _COMPILED_OFFSET_MODELS.get(model)
    if offsets is None:
        offsets = _COMPILED_OFFSET_MODELS[model] = model.offset_model()
    return offsets.predict_on_batch(images)


def train_ids_to_label_ids(labels):
    """Cityscapes train ids (0..18, ignore 255) to label ids, for the benchmark server.

    Ignored pixels become 0 ("unlabeled").

    Example:
    ```python
    save_png("berlin_000000_000019_leftImg8bit.png", train_ids_to_label_ids(labels))
    ```
    """
    label_ids = np.flatnonzero(LABEL_ID_TO_TRAIN_ID != 255)
    table = np.zeros(256, "uint8")
    table[LABEL_ID_TO_TRAIN_ID[label_ids]] = label_ids
    labels = _check_labels(labels, CITYSCAPES_COLORS, ignore_index=255)
    return table[labels]


# The library's one image reader (uint8 RGB, a clear error naming the file, and
# images beyond `max_pixels` refused before decoding); `load_image` is its
# historical name here.
load_image = read_image


def save_png(path, array):
    """Writes a uint8 `(H, W)` or `(H, W, 3)` array as a PNG, creating its folder.

    The file is written atomically (a temporary file, then a rename): readers
    and concurrent writers see a whole PNG, the old one or the new one.

    Example:
    ```python
    save_png("out/labels.png", colorize_labels(labels, cityscapes_palette()))
    ```
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))
    ):
        raise ValueError(
            "save_png needs a uint8 array of shape (H, W), (H, W, 3) or (H, W, 4); "
            f"received dtype {array.dtype} and shape {array.shape} for {path}."
        )
    from alignseg_keras.atomic import atomic_path

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:  # never a torn PNG, even with concurrent writers
        Image.fromarray(array).save(temporary, format="PNG")


# --- Captions for pictures: titles, class legends and the color-wheel key. ---


def _font(size):
    from PIL import ImageFont

    return ImageFont.load_default(size=int(size))


def _wrap(text, font, width):
    """Greedy word wrap of `text` (newlines kept) into lines at most `width` pixels long."""
    lines = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if not line or font.getlength(candidate) <= width:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def titled(picture, title, font_size=12, padding=3, color=(0, 0, 0)):
    """`picture` with `title` written in a white band above it.

    The title wraps at word boundaries to the picture's width; the default font
    (Pillow's, ASCII) needs no font file.

    Args:
        picture: uint8 `(H, W, 3)` RGB array.
        title: str; `\\n` starts a new line.
        font_size: int, text height in pixels.
        padding: int, white margin around the text in pixels.
        color: RGB color of the text.

    Returns:
        uint8 `(H + band, W, 3)`, the band as high as the wrapped title needs.

    Example:
    ```python
    save_png("prediction.png", titled(overlay(image, labels, palette), "Prediction"))
    ```
    """
    from PIL import Image, ImageDraw

    picture = np.asarray(picture)
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[-1] != 3:
        raise ValueError(
            f"`picture` must be a uint8 (H, W, 3) array; received {picture.dtype} {picture.shape}."
        )
    font = _font(font_size)
    width = picture.shape[1]
    lines = _wrap(title, font, max(width - 2 * padding, 1))
    line_height = int(font_size) + 2
    band = Image.new("RGB", (width, len(lines) * line_height + 2 * padding), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for index, line in enumerate(lines):
        draw.text((padding, padding + index * line_height), line, font=font, fill=tuple(color))
    return np.concatenate([np.asarray(band), picture], axis=0)


def legend(names, colors, width, font_size=12, padding=4, swatch=None):
    """A class legend: a color swatch and the name of each class, in rows that fit `width`.

    Args:
        names: class names.
        colors: one RGB color per name (e.g. a palette array).
        width: int, width of the legend in pixels.
        font_size: int, text height in pixels.
        padding: int, space in pixels around and between entries.
        swatch: int or None, side of the color squares (None: the text height).

    Returns:
        uint8 `(h, width, 3)` RGB array on a white background.

    Example:
    ```python
    save_png("legend.png", legend(CITYSCAPES_CLASSES, cityscapes_palette(), 600))
    ```
    """
    from PIL import Image, ImageDraw

    names, colors = [str(name) for name in names], np.asarray(colors)
    if colors.ndim != 2 or colors.shape[-1] != 3 or len(colors) < len(names):
        raise ValueError(
            f"`colors` needs one RGB color per name ({len(names)}); received shape {colors.shape}."
        )
    font = _font(font_size)
    swatch = int(font_size) if swatch is None else int(swatch)
    row_height = max(swatch, int(font_size) + 2) + padding
    entries, x, y = [], padding, padding
    for name, color in zip(names, colors):
        entry_width = swatch + 4 + int(math.ceil(font.getlength(name))) + 3 * padding
        if x > padding and x + entry_width > width:
            x, y = padding, y + row_height
        entries.append((x, y, name, tuple(int(c) for c in color)))
        x += entry_width
    image = Image.new("RGB", (int(width), y + row_height + padding), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x, y, name, color in entries:
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=color, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), name, font=font, fill=(0, 0, 0))
    return np.asarray(image)


def offset_key(size=64):
    """The color wheel that decodes `flow_to_color` pictures: a disk whose hue is
    the direction of an offset (right, down, left, up around the circle) and
    whose saturation its length (white: none; full color: the longest).

    Returns:
        uint8 `(size, size, 3)` RGB array, white outside the disk.

    Example:
    ```python
    save_png("key.png", titled(offset_key(64), "offset direction"))
    ```
    """
    size = int(size)
    if size < 2:
        raise ValueError(f"`size` must be at least 2; received {size!r}.")
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    field = np.stack(np.broadcast_arrays(coords[:, None], coords[None, :]), axis=-1)
    inside = np.hypot(field[..., 0], field[..., 1]) <= 1.0
    key = flow_to_color(np.where(inside[..., None], field, 0.0).astype("float32"), 1.0)
    return np.where(inside[..., None], key, np.uint8(255)).astype("uint8")
