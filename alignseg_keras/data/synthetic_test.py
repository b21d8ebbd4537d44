import numpy as np

from alignseg_keras import data
from alignseg_keras import synthetic_scenes
from alignseg_keras.data import synthetic

SIZE = (64, 128)


def test_dataset_yields_the_arrays():
    images, masks = synthetic.synthetic_scene_arrays(2, SIZE, seed=5)
    dataset = synthetic.synthetic_scenes(2, SIZE, seed=5)
    for (image, mask), expected_image, expected_mask in zip(dataset, images, masks):
        assert image.dtype.name == "uint8" and mask.dtype.name == "uint8"
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(mask, expected_mask)


def test_data_reexports_the_numpy_scenes():
    # Callers of alignseg_keras.data and alignseg_keras.data.synthetic keep working.
    assert data.SYNTHETIC_CLASSES is synthetic_scenes.SYNTHETIC_CLASSES
    assert data.SYNTHETIC_COLORS is synthetic_scenes.SYNTHETIC_COLORS
    assert data.synthetic_scene_arrays is synthetic_scenes.synthetic_scene_arrays
    assert synthetic.POLE == synthetic_scenes.POLE
    assert synthetic.draw_scene is synthetic_scenes.draw_scene
