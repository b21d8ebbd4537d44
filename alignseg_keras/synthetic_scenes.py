"""Synthetic street scenes: a small, deterministic dataset drawn in NumPy.

Each scene has a sky, a row of buildings with windows, trees, a road in
perspective with lane markings, sidewalks with tiles, thin poles, cars and
people, drawn back to front so that objects occlude each other. Classes differ
in color, texture and layout; the image is lightly blurred so that object
boundaries are soft while the label map stays sharp, which is where feature
alignment matters. Nothing is downloaded: the scenes are a function of
`(seed, index)` alone.

This module needs only NumPy (no TensorFlow), so the scenes can be drawn on any
Keras backend; `alignseg_keras.data.synthetic_scenes` wraps them in a
`tf.data.Dataset`.
"""

import numpy as np

# Train ids follow the order of the matching Cityscapes classes.
SYNTHETIC_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "pole",
    "vegetation",
    "sky",
    "person",
    "car",
)
# Cityscapes' display colors of the same classes, in train-id order.
SYNTHETIC_COLORS = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (153, 153, 153),
    (107, 142, 35),
    (70, 130, 180),
    (220, 20, 60),
    (0, 0, 142),
)
ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR = range(8)

BUILDING_COLORS = ((150, 118, 96), (128, 112, 104), (176, 152, 118), (112, 88, 78), (146, 138, 120))
WINDOW_COLOR = (84, 98, 124)
CAR_COLORS = ((184, 32, 30), (226, 226, 222), (36, 46, 120), (222, 124, 24), (214, 192, 44))
CLOTHES_COLORS = ((20, 150, 150), (196, 44, 156), (112, 52, 166), (40, 182, 222))
SKIN_COLORS = ((232, 186, 152), (160, 110, 76))
MIN_SIZE = 32


class _Canvas:
    """An image (float RGB) and its label map, painted back to front."""

    def __init__(self, height, width, rng):
        self.height, self.width, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), np.float32)
        self.mask = np.zeros((height, width), np.uint8)

    def paint(self, top, left, region, class_id, color):
        """Paints `color` and `class_id` where the boolean `region` (placed at
        `(top, left)`, clipped to the canvas) is True."""
        bottom, right = top + region.shape[0], left + region.shape[1]
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(bottom, self.height), min(right, self.width)
        if y0 >= y1 or x0 >= x1:
            return
        color = np.broadcast_to(np.asarray(color, np.float32), region.shape + (3,))
        inside = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        region, color = region[inside], color[inside]
        self.image[y0:y1, x0:x1][region] = color[region]
        self.mask[y0:y1, x0:x1][region] = class_id

    def noise(self, height, width, cell, amplitude):
        """Smooth noise of the given size: random values on a grid of `cell` pixels."""
        grid = self.rng.normal(0.0, amplitude, (height // cell + 2, width // cell + 2))
        noise = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
        return noise[:height, :width, None].astype(np.float32)


def _ellipse(height, width):
    ys = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    xs = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0


def _box(height, width):
    return np.ones((max(height, 1), max(width, 1)), bool)


def _draw_sky(canvas, horizon):
    top = np.array(canvas.rng.uniform((60, 120, 190), (110, 165, 235)), np.float32)
    low = np.array(canvas.rng.uniform((165, 195, 225), (200, 220, 245)), np.float32)
    weight = np.linspace(0.0, 1.0, canvas.height, dtype=np.float32)[:, None, None]
    weight = np.minimum(weight * canvas.height / max(horizon, 1), 1.0)
    sky = top * (1 - weight) + low * weight
    sky = sky + canvas.noise(canvas.height, canvas.width, max(canvas.height // 8, 2), 6.0)
    canvas.paint(0, 0, _box(canvas.height, canvas.width), SKY, sky)


def _draw_building(canvas, left, width, top, horizon):
    rng = canvas.rng
    height = horizon - top
    color = np.array(BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))], np.float32)
    color = color * rng.uniform(0.85, 1.1) + canvas.noise(height, width, 3, 5.0)
    period_y = max(int(canvas.height * rng.uniform(0.05, 0.08)), 4)
    period_x = max(int(canvas.width * rng.uniform(0.025, 0.04)), 4)
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    windows = (ys % period_y < period_y * 0.55) & (xs % period_x < period_x * 0.5)
    windows &= (ys > period_y // 2) & (ys < height - period_y) & (xs > 1) & (xs < width - 2)
    color = np.where(windows[..., None], np.float32(WINDOW_COLOR), color)
    canvas.paint(top, left, _box(height, width), BUILDING, color)


def _draw_buildings(canvas, horizon):
    left = 0
    while left < canvas.width:
        width = int(canvas.width * canvas.rng.uniform(0.12, 0.32))
        top = int(canvas.height * canvas.rng.uniform(0.04, 0.3))
        if canvas.rng.random() > 0.15 and horizon - top > 8:
            _draw_building(canvas, left, width, top, horizon)
        left += width


def _draw_tree(canvas, center_x, base_y, size):
    rng = canvas.rng
    for _ in range(rng.integers(3, 6)):
        radius_y = int(size * rng.uniform(0.35, 0.6))
        radius_x = int(size * rng.uniform(0.35, 0.6) * 1.3)
        y = base_y - size + int(size * rng.uniform(-0.4, 0.3))
        x = center_x + int(size * rng.uniform(-0.5, 0.5))
        region = _ellipse(2 * radius_y + 1, 2 * radius_x + 1)
        green = np.array(rng.uniform((40, 95, 25), (80, 140, 55)), np.float32)
        shade = 1.0 + canvas.noise(region.shape[0], region.shape[1], 2, 0.18)
        canvas.paint(y - radius_y, x - radius_x, region, VEGETATION, green * shade)


def _draw_vegetation(canvas, horizon):
    rng = canvas.rng
    for _ in range(rng.integers(1, 4)):
        size = int(canvas.height * rng.uniform(0.12, 0.22))
        _draw_tree(canvas, int(rng.uniform(0, canvas.width)), horizon, size)
    hedge_height = max(int(canvas.height * rng.uniform(0.03, 0.07)), 1)  # as `_box`
    hedge_left = int(rng.uniform(0, 0.6) * canvas.width)
    hedge_width = int(rng.uniform(0.2, 0.5) * canvas.width)
    green = np.array(rng.uniform((45, 100, 30), (75, 135, 50)), np.float32)
    shade = 1.0 + canvas.noise(hedge_height, hedge_width, 2, 0.15)
    region = _box(hedge_height, hedge_width)
    canvas.paint(horizon - hedge_height, hedge_left, region, VEGETATION, green * shade)


class _Road:
    """The road's edges: straight lines from near the vanishing point to the bottom."""

    def __init__(self, canvas, horizon):
        rng, width = canvas.rng, canvas.width
        self.horizon, self.height = horizon, canvas.height
        vanishing = rng.uniform(0.4, 0.6) * width
        half_far = rng.uniform(0.03, 0.06) * width
        self.far = (vanishing - half_far, vanishing + half_far)
        self.near = (rng.uniform(-0.1, 0.22) * width, rng.uniform(0.78, 1.1) * width)

    def depth(self, y):
        """0 at the horizon, 1 at the bottom of the image."""
        return (y - self.horizon) / max(self.height - self.horizon, 1)

    def edges(self, y):
        t = self.depth(y)
        left = self.far[0] + (self.near[0] - self.far[0]) * t
        right = self.far[1] + (self.near[1] - self.far[1]) * t
        return left, right


def _draw_ground(canvas, road):
    rng, horizon = canvas.rng, road.horizon
    height, width = canvas.height - horizon, canvas.width
    ys = np.arange(horizon, canvas.height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    left, right = road.edges(ys)
    on_road = (xs >= left) & (xs < right)
    tile = max(int(width * rng.uniform(0.02, 0.035)), 3)
    tiles = ((ys.astype(int) % tile == 0) | (xs.astype(int) % tile == 0)).astype(np.float32)
    paving = np.array(rng.uniform((150, 126, 136), (178, 150, 162)), np.float32)
    paving = paving * (1.0 - 0.18 * tiles[..., None]) + canvas.noise(height, width, 2, 4.0)
    kerb = (np.abs(xs - left) < 1.5) | (np.abs(xs - right) < 1.5)
    paving = np.where(kerb[..., None], np.float32(210), paving)
    canvas.paint(horizon, 0, ~on_road | kerb, SIDEWALK, paving)
    asphalt = np.float32(rng.uniform(78, 104)) + canvas.noise(height, width, 1, 5.0)
    centre = (left + right) / 2
    line_width = 0.6 + 0.012 * width * road.depth(ys)
    dash = max(int(height * rng.uniform(0.12, 0.2)), 2)
    lane = (np.abs(xs - centre) < line_width) & ((ys.astype(int) // dash) % 2 == 0)
    asphalt = np.where(lane[..., None], np.float32(225), asphalt)
    canvas.paint(horizon, 0, on_road & ~kerb, ROAD, asphalt)


def _draw_pole(canvas, x, base_y, scale):
    width = max(int(round(canvas.width * 0.016 * scale)), 3)
    height = int(canvas.height * (0.35 + 0.45 * scale))
    gray = np.float32(canvas.rng.uniform(48, 62))
    canvas.paint(base_y - height, x, _box(height, width), POLE, gray)
    if canvas.rng.random() < 0.5:
        arm = int(canvas.width * 0.05 * scale) + 2
        side = x - arm if canvas.rng.random() < 0.5 else x + width
        canvas.paint(base_y - height, side, _box(width, arm), POLE, gray)


def _draw_car(canvas, center_x, base_y, scale):
    rng = canvas.rng
    width = max(int(canvas.width * 0.3 * scale), 6)
    height = max(int(width * 0.5), 4)
    left, top = center_x - width // 2, base_y - height
    color = np.array(CAR_COLORS[rng.integers(len(CAR_COLORS))], np.float32)
    body_top = height * 2 // 5
    cabin = _box(body_top, width * 3 // 5)
    canvas.paint(top, left + width // 5, cabin, CAR, color * 0.9)
    window = _box(max(body_top * 2 // 3, 1), width * 2 // 5)
    canvas.paint(top + body_top // 4, left + width * 3 // 10, window, CAR, (42, 52, 70))
    canvas.paint(top + body_top, left, _box(height - body_top, width), CAR, color)
    wheel = max(height // 3, 2)
    for wheel_x in (left + width // 6, left + width - width // 6 - wheel):
        canvas.paint(base_y - wheel, wheel_x, _ellipse(wheel, wheel), CAR, (24, 24, 26))


def _draw_person(canvas, center_x, base_y, scale):
    rng = canvas.rng
    height = max(int(canvas.height * 0.45 * scale), 8)
    width = max(height // 3, 3)
    left = center_x - width // 2
    head = max(height // 6, 2)
    legs = height * 2 // 5
    canvas.paint(base_y - legs, left + width // 6, _box(legs, width * 2 // 3), PERSON, (44, 44, 74))
    clothes = CLOTHES_COLORS[rng.integers(len(CLOTHES_COLORS))]
    torso = _ellipse(height - legs - head + 2, width)
    canvas.paint(base_y - height + head - 1, left, torso, PERSON, clothes)
    skin = SKIN_COLORS[rng.integers(len(SKIN_COLORS))]
    canvas.paint(base_y - height, center_x - head // 2, _ellipse(head, head), PERSON, skin)


def _place_objects(canvas, road):
    """Poles and people on the sidewalks, cars on the road, as (y, drawer, x, scale)."""
    rng, objects = canvas.rng, []
    bottom = canvas.height + canvas.height // 10

    def random_depth(low):
        y = int(rng.uniform(road.horizon + low * (canvas.height - road.horizon), bottom))
        return y, max(road.depth(y), 0.15)

    def beside_road(y, margin):
        left, right = road.edges(y)
        if rng.random() < 0.5 and left - margin > 0:
            return int(rng.uniform(0, left - margin))
        return int(rng.uniform(min(right + margin, canvas.width - 1), canvas.width))

    for _ in range(rng.integers(1, 4)):
        y, scale = random_depth(0.2)
        objects.append((y, _draw_pole, beside_road(y, 3), scale))
    for _ in range(rng.integers(1, 4)):
        y, scale = random_depth(0.2)
        left, right = road.edges(y)
        x = int(rng.uniform(left + 0.15 * (right - left), right - 0.15 * (right - left)))
        objects.append((y, _draw_car, x, scale))
    for _ in range(rng.integers(1, 5)):
        y, scale = random_depth(0.15)
        objects.append((y, _draw_person, beside_road(y, canvas.width * 0.04 * scale), scale))
    return sorted(objects, key=lambda item: item[0])


def _finish(canvas):
    """Lighting, sensor noise and a slight blur; returns the uint8 image."""
    image = canvas.image * canvas.rng.uniform(0.85, 1.15)
    image = image + canvas.rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    image = (
        padded[1:-1, 1:-1] * 4
        + padded[:-2, 1:-1]
        + padded[2:, 1:-1]
        + padded[1:-1, :-2]
        + padded[1:-1, 2:]
    ) / 8.0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def draw_scene(rng, image_size):
    """Draws one synthetic street scene.

    Args:
        rng: `numpy.random.Generator` that decides everything in the scene.
        image_size: `(height, width)`, each at least 32.

    Returns:
        `(image, mask)`: uint8 `(height, width, 3)` RGB image and uint8
        `(height, width)` train ids indexing `SYNTHETIC_CLASSES`.

    Example:
    ```python
    image, mask = draw_scene(np.random.default_rng(0), (128, 256))
    ```
    """
    height, width = image_size
    canvas = _Canvas(height, width, rng)
    horizon = int(height * rng.uniform(0.42, 0.55))
    _draw_sky(canvas, horizon)
    _draw_buildings(canvas, horizon)
    _draw_vegetation(canvas, horizon)
    road = _Road(canvas, horizon)
    _draw_ground(canvas, road)
    for base_y, draw, x, scale in _place_objects(canvas, road):
        draw(canvas, x, base_y, scale)
    return _finish(canvas), canvas.mask


def _check_image_size(image_size):
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"`image_size` must be (height, width); received {image_size!r}."
        ) from None
    if min(height, width) < MIN_SIZE:
        raise ValueError(
            f"`image_size` must be at least {MIN_SIZE}x{MIN_SIZE}; received {image_size!r}."
        )
    return height, width


def synthetic_scene_arrays(num_images=256, image_size=(256, 512), seed=0):
    """Draws `num_images` synthetic street scenes as NumPy arrays.

    Scene `i` depends only on `(seed, i)`, so the first scenes of a larger set
    equal those of a smaller one; another `seed` gives other scenes (use one
    seed for training and another for a held-out split).

    Args:
        num_images: int, number of scenes.
        image_size: `(height, width)` of every scene, each at least 32.
        seed: int, which scenes to draw.

    Returns:
        `(images, masks)`: uint8 arrays `(num_images, height, width, 3)` and
        `(num_images, height, width)` of train ids indexing `SYNTHETIC_CLASSES`.

    Example:
    ```python
    images, masks = synthetic_scene_arrays(8, (128, 256), seed=1)
    ```
    """
    if int(num_images) < 1:
        raise ValueError(f"`num_images` must be a positive int; received {num_images!r}.")
    if int(seed) < 0:
        raise ValueError(f"`seed` must be a non-negative int; received {seed!r}.")
    height, width = _check_image_size(image_size)
    images = np.empty((int(num_images), height, width, 3), np.uint8)
    masks = np.empty((int(num_images), height, width), np.uint8)
    for index in range(int(num_images)):
        rng = np.random.default_rng([int(seed), index])
        images[index], masks[index] = draw_scene(rng, (height, width))
    return images, masks
