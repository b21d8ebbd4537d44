"""The paper's Cityscapes recipe in a few lines of Python (Huang et al., TPAMI 2021, Sec. 4.1).

    python examples/train_cityscapes.py /data/cityscapes runs/cityscapes

Every number of the recipe (769x769 crops, scale 0.5-2.0, batch 8, SGD with poly LR from
1e-2 over 40k steps, weight decay 1e-4, deep supervision 0.4) is the library's default: this script
restates none of them. For a resumable run with checkpoints, OHEM, mixed precision and
distribution options, use the command line, which does the same with more care:

    alignseg train --dataset cityscapes --data-dir /data/cityscapes --output-dir runs/cs \
        --backbone-weights imagenet
"""

import os
import sys

import tensorflow as tf

from alignseg_keras import AlignSeg
from alignseg_keras import data
from alignseg_keras.optimizers import CITYSCAPES_STEPS

STEPS_PER_EPOCH = 1000


def main(data_dir, output):
    with tf.distribute.MirroredStrategy().scope():  # all local GPUs; BatchNorm synchronised
        model = AlignSeg(len(data.CITYSCAPES_CLASSES), backbone_weights="imagenet")
        model.compile()  # the paper's recipe
    batches = data.training_pipeline(
        data.load_cityscapes(data_dir, split="train", shuffle_files=True, seed=0, repeat=True),  # sorted by city
        fill_mean=model.image_converter.mean,  # crops are padded with the model's own mean
    )
    model.fit(batches, epochs=CITYSCAPES_STEPS // STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH)
    model.save_to_preset(os.path.join(output, "preset"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
