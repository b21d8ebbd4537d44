"""Class names, display colors and label tables of the datasets, with NumPy only.

Backend-neutral: the module itself needs NumPy only (importing it runs the
package's `__init__`, which imports Keras on its backend, and TensorFlow only on
the TensorFlow backend), so `alignseg_keras.visualize`, `alignseg predict` and
notebooks can name and draw classes on every Keras backend, TensorFlow installed
or not. The `tf.data` readers in
`alignseg_keras.data` re-export these names.

Example:
```python
from alignseg_keras.datasets_info import ADE20K_CLASSES, class_names
ADE20K_CLASSES[2]      # "sky"
class_names(19)[13]    # "car" (19 classes: Cityscapes)
```
"""

import numpy as np

from alignseg_keras.checks import IGNORE_INDEX

# === Cityscapes (fine annotations, the 19 evaluated classes) ===

CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# Official display colors of the 19 classes, in train-id order.
CITYSCAPES_COLORS = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)
# Label ids (0..33) of the 19 evaluated classes, in train-id order.
CITYSCAPES_EVALUATED_LABEL_IDS = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33
)
NUM_LABEL_IDS = 34
# `train_id = LABEL_ID_TO_TRAIN_ID[label_id]`; 255 for the ids not evaluated.
LABEL_ID_TO_TRAIN_ID = np.full(NUM_LABEL_IDS, IGNORE_INDEX, np.uint8)
LABEL_ID_TO_TRAIN_ID[list(CITYSCAPES_EVALUATED_LABEL_IDS)] = np.arange(
    len(CITYSCAPES_EVALUATED_LABEL_IDS)
)
LABEL_ID_TO_TRAIN_ID.setflags(write=False)

# === ADE20K (SceneParsing ADEChallengeData2016, 150 classes) ===

# The first name of each class of SceneParsing's objectInfo150.csv, by train
# id (stored label - 1), as the CSAIL toolkit and mmsegmentation print them.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
ADE20K_NUM_CLASSES = len(ADE20K_CLASSES)

# The ADE20K palette of the CSAIL toolkit and mmsegmentation, by train id.
_ADE20K_HEX_COLORS = (
    "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 "
    "e005ff ebff07 96053d 787846 08ff33 ff0652 8fff8c ccff04 ff3307 cc4603 "
    "0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff "
    "08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 "
    "ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f "
    "14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff "
    "0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 "
    "008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99 ff5c00 ff00ff "
    "ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 "
    "00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 "
    "8fff00 5200ff a3ff00 ffeb00 08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff "
    "00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 "
    "ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 "
    "00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff "
    "4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff"
)
ADE20K_COLORS = tuple(
    tuple(int(code[i : i + 2], 16) for i in (0, 2, 4)) for code in _ADE20K_HEX_COLORS.split()
)

# Datasets by their number of classes, for naming the classes of a model.
_NAMES_BY_CLASS_COUNT = {
    len(CITYSCAPES_CLASSES): CITYSCAPES_CLASSES,
    ADE20K_NUM_CLASSES: ADE20K_CLASSES,
}


def class_names(num_classes, dataset=None):
    """Names of `num_classes` classes: a dataset's, or their numbers as strings.

    Args:
        num_classes: int, the model's number of classes.
        dataset: None, `"cityscapes"` or `"ade20k"`. None names the classes of
            the dataset with `num_classes` classes (19: Cityscapes, 150:
            ADE20K) and numbers any other count.

    Example:
    ```python
    class_names(150)[:3]   # ("wall", "building", "sky")
    class_names(4)         # ("0", "1", "2", "3")
    ```
    """
    named = {"cityscapes": CITYSCAPES_CLASSES, "ade20k": ADE20K_CLASSES}
    if dataset is not None:
        if dataset not in named:
            raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(named)}.")
        names = named[dataset]
        if len(names) != num_classes:
            raise ValueError(
                f"{dataset} has {len(names)} classes; the model has {num_classes}."
            )
        return names
    return _NAMES_BY_CLASS_COUNT.get(num_classes, tuple(str(i) for i in range(num_classes)))
