"""Pictures in TensorBoard while training: predictions, offset fields and a confusion matrix.

TensorFlow-only (`tf.summary.image`); the pictures themselves are drawn by
`alignseg_keras.visualize` (NumPy and Pillow). `SegmentationPictures` is a
Keras callback that, every `every_n_steps` optimizer steps or at each epoch
end, runs the model on a fixed set of validation images and writes, under the
optimizer step:

- `pictures/example_K`, one panel per image: the image, the ground truth and
  the prediction blended over it, and below them the color-wheel offset field
  of every alignment module (as `alignseg predict --offsets` draws them);
- `pictures/confusion`: the confusion matrix of those images' pixels, rows =
  truth normalised per row, as a heat map with the class names;
- `pictures/legend`: the class colors and the color-wheel key (first write only).
"""

import numpy as np
import tensorflow as tf

import keras

from alignseg_keras import visualize
from alignseg_keras.checks import IGNORE_INDEX
from alignseg_keras.checks import check_ignore_label
from alignseg_keras.checks import expected_image_range
from alignseg_keras.checks import label_value_error
from alignseg_keras.optimizers import optimizer_step

GAP = 4  # white pixels between the pictures of a panel
# The heat map goes from white (0) to this dark blue (1).
_HEAT_LOW = np.array([255.0, 255.0, 255.0])
_HEAT_HIGH = np.array([8.0, 48.0, 107.0])
_EMPTY_ROW = (224, 224, 224)  # classes without a pixel in the truth


def confusion_counts(labels, predictions, num_classes, ignore_index=IGNORE_INDEX):
    """Pixel counts `(num_classes, num_classes)`, int64: `[truth, prediction]`.

    Pixels whose truth is `ignore_index` (or outside `[0, num_classes)`) are
    not counted.

    Example:
    ```python
    confusion_counts([[0, 1]], [[0, 0]], 2)  # [[1, 0], [1, 0]]
    ```
    """
    labels = np.asarray(labels).reshape(-1).astype("int64")
    predictions = np.asarray(predictions).reshape(-1).astype("int64")
    if labels.shape != predictions.shape:
        raise ValueError(
            f"`labels` and `predictions` differ in size: {labels.size} and {predictions.size}."
        )
    keep = (labels >= 0) & (labels < num_classes) & (predictions >= 0) & (predictions < num_classes)
    if ignore_index is not None:
        keep &= labels != ignore_index
    index = labels[keep] * num_classes + predictions[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def normalized_confusion(confusion):
    """Each row of a confusion matrix (rows = truth) divided by its sum; empty rows stay 0.

    Example:
    ```python
    normalized_confusion([[3, 1], [0, 0]])  # [[0.75, 0.25], [0, 0]]
    ```
    """
    confusion = np.asarray(confusion, "float64")
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def heat_colors(values):
    """Heat-map colors of values in [0, 1]: white at 0, dark blue at 1, uint8 `(..., 3)`."""
    values = np.clip(np.asarray(values, "float64"), 0.0, 1.0)[..., None]
    return np.round(_HEAT_LOW + values * (_HEAT_HIGH - _HEAT_LOW)).astype("uint8")


def confusion_layout(num_classes, class_names=None, font_size=12, max_size=640):
    """`(cell, left, top)`: the cell side and the margins of `confusion_picture`, in pixels."""
    cell = int(max(4, min(40, max_size // max(num_classes, 1))))
    show_names = class_names is not None and cell >= 10
    left = top = 4
    if show_names:
        font = visualize._font(min(font_size, cell - 2))
        left += int(max(font.getlength(f"{k} {name}") for k, name in enumerate(class_names))) + 6
        top += min(font_size, cell - 2) + 6
    return cell, left, top


def confusion_picture(matrix, class_names=None, font_size=12, max_size=640):
    """A heat-map picture of a normalised confusion matrix (rows = truth), uint8 `(h, w, 3)`.

    Row k starts with "k name" (the class names, when the cells are at least
    10 pixels), the columns are headed by the class indices; a cell of value v
    is `heat_colors(v)`, a row without any pixel of that class light gray.
    Cells of 24 pixels or more also show the percentage. `confusion_layout`
    gives the cell size and the margins.

    Example:
    ```python
    matrix = normalized_confusion(confusion_counts(masks, predicted, 8))
    save_png("confusion.png", confusion_picture(matrix, SYNTHETIC_CLASSES))
    ```
    """
    from PIL import Image
    from PIL import ImageDraw

    matrix = np.asarray(matrix, "float64")
    num_classes = len(matrix)
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"`matrix` must be square; received shape {matrix.shape}.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
    cell, left, top = confusion_layout(num_classes, class_names, font_size, max_size)
    picture = np.full((top + num_classes * cell + 4, left + num_classes * cell + 4, 3), 255, "uint8")
    colors = heat_colors(matrix)
    empty = matrix.sum(axis=1) == 0
    colors[empty] = _EMPTY_ROW
    block = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    picture[top : top + num_classes * cell, left : left + num_classes * cell] = block
    if class_names is None or cell < 10:
        return picture
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    size = min(font_size, cell - 2)
    font = visualize._font(size)
    for k, name in enumerate(class_names):
        y = top + k * cell + (cell - size) // 2
        draw.text((4, y), f"{k} {name}", font=font, fill=(0, 0, 0))
        draw.text((left + k * cell + 2, 4), str(k), font=font, fill=(0, 0, 0))
    if cell >= 24:
        small = visualize._font(max(cell // 3, 6))
        for (row, column), value in np.ndenumerate(matrix):
            if empty[row]:
                continue
            ink = (255, 255, 255) if value > 0.5 else (0, 0, 0)
            draw.text((left + column * cell + 2, top + row * cell + cell - cell // 3 - 3),
                      f"{round(100 * value)}", font=small, fill=ink)
    return np.asarray(image)


def _resize(picture, height, width, nearest=False):
    from PIL import Image

    if picture.shape[:2] == (height, width):
        return picture
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(picture).resize((int(width), int(height)), method))


def _row(pictures, width):
    """Pictures side by side with white gaps, padded white to `width` and their common height."""
    height = max(picture.shape[0] for picture in pictures)
    parts = []
    for picture in pictures:
        if parts:
            parts.append(np.full((height, GAP, 3), 255, "uint8"))
        pad = height - picture.shape[0]
        parts.append(np.pad(picture, ((0, pad), (0, 0), (0, 0)), constant_values=255))
    row = np.concatenate(parts, axis=1)
    return np.pad(row, ((0, 0), (0, max(width - row.shape[1], 0)), (0, 0)), constant_values=255)


def example_panel(image, mask, prediction, palette, offsets=None, max_side=512, alpha=0.5,
                  ignore_index=IGNORE_INDEX):
    """One image's panel: image | ground truth | prediction, then the offset fields below.

    Every picture is scaled so that the image's longer side is at most
    `max_side` pixels and titled; the offset pictures (dict from module name
    to `visualize.offset_images` picture) fill rows as wide as the first.

    `image` is RGB 0..255 (values outside are clipped); `ignore_index` is the ground
    truth's: a prediction has no ignored label.

    Returns:
        uint8 `(h, w, 3)` RGB array.
    """
    image = np.clip(np.round(np.asarray(image, "float32")), 0, 255).astype("uint8")
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
    first = [
        visualize.titled(_resize(image, small_h, small_w), "image"),
        visualize.titled(_resize(visualize.overlay(image, mask, palette, alpha, ignore_index),
                                 small_h, small_w), "ground truth"),
        visualize.titled(_resize(visualize.overlay(image, prediction, palette, alpha, None),
                                 small_h, small_w), "prediction"),
    ]
    panel_width = 3 * small_w + 2 * GAP
    rows, current, used = [_row(first, panel_width)], [], 0
    for name, picture in (offsets or {}).items():
        picture_width = max(1, round(picture.shape[1] * small_h / picture.shape[0]))
        picture = visualize.titled(_resize(picture, small_h, picture_width, nearest=True),
                                   f"offsets {name}")
        needed = picture.shape[1] + (GAP if current else 0)
        if current and used + needed > panel_width:
            rows.append(_row(current, panel_width))
            current, used, needed = [], 0, picture.shape[1]
        current.append(picture)
        used += needed
    if current:
        rows.append(_row(current, panel_width))
    width = max(row.shape[1] for row in rows)
    gap = np.full((GAP, width, 3), 255, "uint8")
    stacked = []
    for row in rows:
        row = np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
        stacked += [gap, row] if stacked else [row]
    return np.concatenate(stacked, axis=0)


def take_examples(dataset, count):
    """The first `count` `(image, mask)` pairs of a dataset, as two lists of NumPy arrays.

    `dataset` is a `tf.data.Dataset` of unbatched `(image (H, W, 3), mask (H, W))`
    pairs (e.g. `data.synthetic_scenes`, `data.load_cityscapes`) or any iterable of them.
    """
    if isinstance(dataset, tf.data.Dataset):
        dataset = dataset.take(count).as_numpy_iterator()
    images, masks = [], []
    for image, mask in dataset:
        if len(images) >= count:
            break
        images.append(np.asarray(image))
        masks.append(np.asarray(mask))
    return images, masks


def _display_scale(model):
    """What a model's images are multiplied by to show them 0..255: 255 for a model of
    0..1 images (its normalisation's mean and std in 0..1), else 1."""
    normalization = getattr(model, "normalization", None)
    if normalization is None:
        return 1.0
    unit = expected_image_range(normalization["mean"], normalization["std"]) == 1.0
    return 255.0 if unit else 1.0


class SegmentationPictures(keras.callbacks.Callback):
    """Writes prediction, ground-truth, offset-field and confusion pictures to TensorBoard.

    Every `every_n_steps` optimizer steps (or, with None, at the end of each
    epoch, after `fit`'s validation), it predicts the first `max_images` of
    `images` one at a time (`inference.predict_whole`), draws the offset field
    of every alignment module (`visualize.offset_images`; models without
    alignment modules get none) and writes, at the optimizer step:
    `pictures/example_K` (image | ground truth | prediction, offsets below),
    `pictures/confusion` (rows = truth, normalised per row, over the pixels of
    those images) and, the first time, `pictures/legend` (class colors and the
    color-wheel key). Pictures are scaled to at most `max_side` pixels.

    With `enabled=False` it computes everything but writes nothing: the
    default, `multiprocess.is_chief()`, writes on process 0 of a multi-process
    job only (every process runs the same forward passes, as every process
    takes part in a save).

    Args:
        log_dir: str, folder of the TensorBoard event files (created on the
            first write).
        images: `(N, H, W, 3)` array or a list of `(H, W, 3)` arrays (sizes may
            differ), RGB 0..255.
        masks: the matching `(H, W)` (or `(H, W, 1)`) label maps, ignore 255.
        class_names: names of the classes (their count must be the model's).
        palette: `(num_classes, 3)` uint8 colors, or None for
            `visualize.get_palette("auto", num_classes)`.
        every_n_steps: int or None (each epoch end).
        max_images: int, how many of `images` to draw.
        max_side: int, longest side of a picture in the panels.
        ignore_index: int, the label of unlabelled pixels.
        enabled: bool or None (process 0 of the job).

    Example:
    ```python
    images, masks = take_examples(data.synthetic_scenes(8, (128, 256), seed=1), 4)
    pictures = SegmentationPictures("runs/a/logs/pictures", images, masks,
                                    class_names=data.SYNTHETIC_CLASSES, every_n_steps=500)
    model.fit(train, epochs=10, steps_per_epoch=1000, callbacks=[pictures])
    ```
    """

    def __init__(self, log_dir, images, masks, class_names, palette=None, every_n_steps=None,
                 max_images=4, max_side=512, ignore_index=IGNORE_INDEX, enabled=None):
        super().__init__()
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"`every_n_steps` must be positive or None; received {every_n_steps!r}.")
        if int(max_images) < 1:
            raise ValueError(f"`max_images` must be positive; received {max_images!r}.")
        images, masks = list(images)[: int(max_images)], list(masks)[: int(max_images)]
        if not images or len(images) != len(masks):
            raise ValueError(
                f"`images` and `masks` must be non-empty and as many; received {len(images)} "
                f"images and {len(masks)} masks."
            )
        self.images = [np.asarray(image) for image in images]
        self.masks = []
        for image, mask in zip(self.images, masks):
            mask = np.asarray(mask)
            if mask.ndim == 3 and mask.shape[-1] == 1:
                mask = mask[..., 0]
            if image.ndim != 3 or image.shape[-1] != 3 or mask.shape != image.shape[:2]:
                raise ValueError(
                    "Every image must be (H, W, 3) and its mask (H, W); received "
                    f"{image.shape} and {mask.shape}."
                )
            self.masks.append(mask.astype("int64"))
        self.log_dir = str(log_dir)
        self.class_names = [str(name) for name in class_names]
        check_ignore_label(ignore_index, len(self.class_names), remedy=(
            "Give SegmentationPictures the label your masks leave unlabelled: "
            "ignore_index=-1 (or None)."))
        for index, mask in enumerate(self.masks):  # here, not at the first picture of a fit
            error = label_value_error(mask, len(self.class_names), f"mask {index} of the pictures",
                                      ignore_index)
            if error is not None:
                raise error
        self.palette = (visualize.get_palette("auto", len(self.class_names))
                        if palette is None else np.asarray(palette, "uint8"))
        if self.palette.ndim != 2 or self.palette.shape[-1] != 3 or (
                len(self.palette) < len(self.class_names)):
            raise ValueError(
                f"`palette` must hold an RGB color (N, 3) for each of the {len(self.class_names)} "
                f"classes; received shape {self.palette.shape}. Leave it out for generated colors."
            )
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.max_side = int(max_side)
        self.ignore_index = ignore_index
        if enabled is None:
            from alignseg_keras.multiprocess import is_chief

            enabled = is_chief()
        self.enabled = bool(enabled)
        self._writer = None
        self._legend_written = False
        self._last_step = None

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps is None:
            return
        step = optimizer_step(self.model)
        if step % self.every_n_steps == 0:
            self.write(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_steps is None:
            self.write(optimizer_step(self.model))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def pictures(self):
        """The pictures of the current model: dict from tag to uint8 `(h, w, 3)` array."""
        from alignseg_keras import inference

        model = self.model
        num_classes = inference.output_classes(model)
        if num_classes != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names for a model of {num_classes} "
                             "classes.")
        pictures, confusion = {}, np.zeros((num_classes, num_classes), "int64")
        for index, (image, mask) in enumerate(zip(self.images, self.masks)):
            prediction = inference.predict_whole(model, image, batch_size=1).argmax(-1)
            try:
                offsets = visualize.offset_images(model, image) if model.offset_outputs else {}
            except ValueError:  # non-finite offsets of diverging weights: no offset pictures
                offsets = {}
            pictures[f"pictures/example_{index}"] = example_panel(
                image * _display_scale(model), mask, prediction, self.palette, offsets,
                self.max_side, ignore_index=self.ignore_index)
            confusion += confusion_counts(mask, prediction, num_classes, self.ignore_index)
        pictures["pictures/confusion"] = visualize.titled(
            confusion_picture(normalized_confusion(confusion), self.class_names),
            "confusion (rows: truth, normalised per row; columns: prediction)")
        return pictures

    def _legend(self):
        width = max(3 * 128, 320)
        colors = visualize.legend(self.class_names, self.palette, width)
        key = visualize.titled(visualize.offset_key(64), "offset direction")
        return _row([colors, key], width + GAP + key.shape[1])

    def write(self, step):
        """Draws the pictures and writes them at `step` (nothing when not `enabled`)."""
        if step == self._last_step:
            return  # every_n_steps at an epoch's last step, then the epoch end
        self._last_step = step
        pictures = self.pictures()
        if not self.enabled:
            return
        if not self._legend_written:
            pictures["pictures/legend"] = self._legend()
            self._legend_written = True
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for tag, picture in pictures.items():
                tf.summary.image(tag, picture[None], step=int(step))
        self._writer.flush()
