"""Train AlignSeg on Cityscapes with the paper's recipe (Huang et al., TPAMI 2021, Sec. 4.1).

    python examples/train_cityscapes.py --data-dir /data/cityscapes --output runs/cityscapes

Cityscapes must be in its official layout (leftImg8bit/ and gtFine/ under --data-dir).
On several GPUs the script uses MirroredStrategy (BatchNorm is then synchronised across
replicas automatically); set TF_CONFIG and pass --multi-worker for several machines.
The recipe: ResNet-101 from ImageNet, 769x769 crops, random scale 0.5-2.0 and flip,
batch 8 per step (the authors' script; the paper uses 16), SGD momentum 0.9, weight decay
1e-4, poly LR from 1e-2 (power 0.9), 40k steps, deep supervision 0.4, optional OHEM.
Interrupted runs resume from the last checkpoint when started again with the same --output.
"""

import argparse
import math
import os

import keras
import tensorflow as tf

from alignseg_keras import AlignSeg
from alignseg_keras import data
from alignseg_keras.callbacks import training_callbacks
from alignseg_keras.losses import OhemCrossEntropy


def parse_args():
    parser = argparse.ArgumentParser(description="AlignSeg on Cityscapes, paper recipe")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--output", default="runs/cityscapes")
    parser.add_argument("--steps", type=int, default=40000)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--crop-size", type=int, default=769)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--ohem", action="store_true")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--multi-worker", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy()
        if args.multi_worker
        else tf.distribute.MirroredStrategy()
    )
    train = data.training_pipeline(
        data.load_cityscapes(args.data_dir, split="train"),
        crop_size=(args.crop_size, args.crop_size),
        batch_size=args.batch_size,
        scale_range=(0.5, 2.0),
    )
    with strategy.scope():
        model = AlignSeg(
            num_classes=len(data.CITYSCAPES_CLASSES),
            backbone="resnet101",
            backbone_weights="imagenet",
        )
        model.compile(
            loss=OhemCrossEntropy(threshold=0.7, min_kept=100000) if args.ohem else None,
            learning_rate=args.lr,
            total_steps=args.steps,
            aux_loss_weight=0.4,
        )
    model.fit(
        train,
        epochs=math.ceil(args.steps / args.checkpoint_every),
        steps_per_epoch=args.checkpoint_every,
        callbacks=training_callbacks(args.output),
    )
    model.save(os.path.join(args.output, "model.keras"))


if __name__ == "__main__":
    main()
