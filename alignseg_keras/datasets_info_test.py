import os
import subprocess
import sys

import numpy as np
import pytest

from alignseg_keras import datasets_info
from alignseg_keras.datasets_info import ADE20K_CLASSES
from alignseg_keras.datasets_info import ADE20K_COLORS
from alignseg_keras.datasets_info import CITYSCAPES_CLASSES
from alignseg_keras.datasets_info import CITYSCAPES_COLORS
from alignseg_keras.datasets_info import LABEL_ID_TO_TRAIN_ID
from alignseg_keras.datasets_info import class_names


def test_ade20k_has_the_150_scene_parsing_names_and_colors():
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES)) == len(ADE20K_COLORS)
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ADE20K_CLASSES[-1] == "flag" and ADE20K_CLASSES[12] == "person"
    assert ADE20K_COLORS[0] == (120, 120, 120)
    assert all(len(color) == 3 and all(0 <= v <= 255 for v in color) for color in ADE20K_COLORS)


def test_cityscapes_names_colors_and_label_table():
    assert len(CITYSCAPES_CLASSES) == len(CITYSCAPES_COLORS) == 19
    assert CITYSCAPES_CLASSES[13] == "car" and CITYSCAPES_COLORS[0] == (128, 64, 128)
    assert LABEL_ID_TO_TRAIN_ID[26] == 13 and LABEL_ID_TO_TRAIN_ID[0] == 255
    evaluated = LABEL_ID_TO_TRAIN_ID[LABEL_ID_TO_TRAIN_ID != 255]
    np.testing.assert_array_equal(evaluated, np.arange(19))


def test_the_data_package_re_exports_the_same_objects():
    from alignseg_keras import data

    assert data.CITYSCAPES_CLASSES is CITYSCAPES_CLASSES
    assert data.CITYSCAPES_COLORS is CITYSCAPES_COLORS
    assert data.ADE20K_CLASSES is ADE20K_CLASSES
    assert data.ADE20K_NUM_CLASSES == 150


def test_class_names():
    assert class_names(19) == CITYSCAPES_CLASSES
    assert class_names(150)[2] == "sky"
    assert class_names(3) == ("0", "1", "2")
    assert class_names(150, "ade20k") is ADE20K_CLASSES
    with pytest.raises(ValueError, match="ade20k has 150 classes"):
        class_names(19, "ade20k")
    with pytest.raises(ValueError, match="Unknown dataset"):
        class_names(19, "voc")


def test_names_palettes_and_image_reading_import_no_tensorflow():
    # With Keras on JAX, these modules must not pull TensorFlow in (backend-neutral core).
    code = (
        "import sys\n"
        "import alignseg_keras.datasets_info, alignseg_keras.image_files\n"
        "import alignseg_keras.visualize\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
        "assert not loaded, loaded[:5]\n"
        "print('ok')\n"
    )
    environment = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    assert datasets_info.ADE20K_NUM_CLASSES == 150
