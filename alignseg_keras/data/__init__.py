"""Datasets (Cityscapes, ADE20K, your own files, synthetic scenes) and the
`tf.data` augmentation pipeline. Every reader yields `(image uint8 (H, W, 3),
mask uint8 (H, W))` with train ids and 255 for ignore."""

try:
    import tensorflow  # noqa: F401
except ImportError as error:
    raise ImportError(
        "alignseg_keras.data builds tf.data pipelines and needs TensorFlow "
        "(pip install tensorflow-cpu); the pipelines feed fit on any Keras backend."
    ) from error

from alignseg_keras.data.ade20k import ADE20K_CLASSES
from alignseg_keras.data.ade20k import ADE20K_COLORS
from alignseg_keras.data.ade20k import ADE20K_NUM_CLASSES
from alignseg_keras.data.ade20k import ade20k_files
from alignseg_keras.data.ade20k import load_ade20k
from alignseg_keras.data.augment import PHOTOMETRIC_DEFAULTS
from alignseg_keras.data.augment import class_balanced_crop
from alignseg_keras.data.augment import crop_is_balanced
from alignseg_keras.data.augment import evaluation_pipeline
from alignseg_keras.data.augment import training_pipeline
from alignseg_keras.data.cityscapes import CITYSCAPES_CLASSES
from alignseg_keras.data.cityscapes import CITYSCAPES_COLORS
from alignseg_keras.data.cityscapes import cityscapes_files
from alignseg_keras.data.cityscapes import cityscapes_to_train_ids
from alignseg_keras.data.cityscapes import load_cityscapes
from alignseg_keras.data.files import from_files
from alignseg_keras.data.files import check_file_headers
from alignseg_keras.data.files import pair_by_name
from alignseg_keras.data.synthetic import synthetic_scenes
from alignseg_keras.data.validation import IGNORE_INDEX
from alignseg_keras.synthetic_scenes import SYNTHETIC_CLASSES
from alignseg_keras.synthetic_scenes import SYNTHETIC_COLORS
from alignseg_keras.synthetic_scenes import synthetic_scene_arrays
