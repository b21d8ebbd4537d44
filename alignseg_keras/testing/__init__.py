"""Helpers for tests of alignseg_keras and of code built on it.

- `models`: tiny AlignSeg models, a tiny feature-pyramid encoder, and
  `randomize_statistics` (weights as after training, for inference tests).
- `layer_test`: `run_layer_test`, `run_backbone_test` and `run_task_test`, the
  checks every layer, backbone and segmenter test runs (after Keras'
  `run_layer_test` and keras-hub's `run_vision_backbone_test` / `run_task_test`).
- `references`: slow NumPy implementations of the paper's formulas, used by
  several tests as an independent reference.
- `metric_references`: slow NumPy loops of the metrics' definitions (Boundary
  IoU's repeated 3x3 erosion, trimap IoU, Dice).
- `loss_references`: slow NumPy loops of the losses (Dice, Focal, Lovász-softmax).
- `checkpoints`: the authors' checkpoint layout, random state dicts and the
  export comparison of the converter tests.
- `folders`: read-only folders for tests of output errors.
- `spies`: `record_predicted_models`, the models the command line predicts with, and
  `record_tap_sums`, which tap sum the alignment sampler traces.
- `comparisons`: `relative_error`, how far a result is from its reference.
"""

from alignseg_keras.testing.comparisons import relative_error
from alignseg_keras.testing.folders import read_only_folder
from alignseg_keras.testing.models import TINY_CONFIG
from alignseg_keras.testing.models import TINY_PYRAMID_LEVELS
from alignseg_keras.testing.models import TinyPyramidEncoder
from alignseg_keras.testing.models import randomize_statistics
from alignseg_keras.testing.models import tiny_alignseg
