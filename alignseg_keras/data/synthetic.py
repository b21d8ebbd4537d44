"""Synthetic street scenes as a `tf.data.Dataset`.

The scenes themselves are drawn in NumPy by `alignseg_keras.synthetic_scenes`
(TensorFlow-free); this module re-exports its names and adds the dataset.
"""

from alignseg_keras.synthetic_scenes import BUILDING  # noqa: F401
from alignseg_keras.synthetic_scenes import CAR  # noqa: F401
from alignseg_keras.synthetic_scenes import MIN_SIZE  # noqa: F401
from alignseg_keras.synthetic_scenes import PERSON  # noqa: F401
from alignseg_keras.synthetic_scenes import POLE  # noqa: F401
from alignseg_keras.synthetic_scenes import ROAD  # noqa: F401
from alignseg_keras.synthetic_scenes import SIDEWALK  # noqa: F401
from alignseg_keras.synthetic_scenes import SKY  # noqa: F401
from alignseg_keras.synthetic_scenes import SYNTHETIC_CLASSES  # noqa: F401
from alignseg_keras.synthetic_scenes import SYNTHETIC_COLORS  # noqa: F401
from alignseg_keras.synthetic_scenes import VEGETATION  # noqa: F401
from alignseg_keras.synthetic_scenes import draw_scene  # noqa: F401
from alignseg_keras.synthetic_scenes import synthetic_scene_arrays


def synthetic_scenes(num_images=256, image_size=(256, 512), seed=0):
    """A `tf.data.Dataset` of synthetic street scenes (no download needed).

    Eight classes (`SYNTHETIC_CLASSES`: road, sidewalk, building, pole,
    vegetation, sky, person, car) drawn with textures, thin poles and occluding
    objects; see `synthetic_scene_arrays` for how seeds select scenes.

    Args:
        num_images: int, number of scenes.
        image_size: `(height, width)` of every scene, each at least 32.
        seed: int, which scenes to draw; a held-out split is another seed.

    Returns:
        A dataset of `(image uint8 (H, W, 3), mask uint8 (H, W))`.

    Example:
    ```python
    train = synthetic_scenes(512, (256, 512), seed=0)
    val = synthetic_scenes(64, (256, 512), seed=1)
    ```
    """
    import tensorflow as tf

    images, masks = synthetic_scene_arrays(num_images, image_size, seed)
    return tf.data.Dataset.from_tensor_slices((images, masks))
