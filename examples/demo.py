"""Train and evaluate a small AlignSeg on the embedded synthetic street scenes.

`make demo` runs this on a CPU in a few minutes: it trains a ResNet-18 AlignSeg
with the paper's recipe (SGD, poly LR, deep supervision) on procedurally drawn
scenes, evaluates it on a held-out set of scenes, prints per-class IoU and a
final `mIoU: X` line, and writes pictures to the output folder: inputs, ground
truth, prediction overlays, and the learned offset fields of every AlignFA /
AlignCM module as color-wheel flow images (as in the paper's Fig. 1).
"""

import argparse
import os
import time

import keras
import numpy as np

from alignseg_keras import AlignSeg
from alignseg_keras import data
from alignseg_keras import visualize
from alignseg_keras.cli.evaluate import format_table
from alignseg_keras.inference import predict_whole
from alignseg_keras.metrics import MeanIoU


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 256))
    parser.add_argument("--crop-size", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--lr", type=float, default=2e-2)
    parser.add_argument("--pictures", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train(args, num_classes):
    model = AlignSeg.from_preset("alignseg_resnet18_small", num_classes=num_classes)
    train_scenes = data.synthetic_scenes(args.train_images, tuple(args.image_size), seed=args.seed)
    batches = data.training_pipeline(
        train_scenes,
        crop_size=tuple(args.crop_size),
        batch_size=args.batch_size,
        scale_range=(0.75, 1.5),
        fill_mean=model.image_converter.mean,  # padding that normalises to zero
        seed=args.seed,
    )
    epochs = 4
    steps_per_epoch = -(-args.steps // epochs)
    model.compile(learning_rate=args.lr, warmup_steps=args.steps // 20)
    model.fit(batches, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=2)
    return model


def evaluate(model, images, masks, class_names):
    metric = MeanIoU(len(class_names))
    predictions = predict_whole(model, images, batch_size=8).argmax(-1)
    metric.update_state(masks, predictions)
    ious = metric.per_class_iou()
    miou = float(np.nanmean(ious))
    print(format_table(class_names, ious, metric.pixel_accuracy(), miou))
    return predictions, miou


def stack_rows(rows, gap=4):
    """Stacks pictures of any widths vertically on a white background."""
    width = max(row.shape[1] for row in rows)
    canvas = [np.full((gap, width, 3), 255, np.uint8)]
    for row in rows:
        padded = np.full((row.shape[0], width, 3), 255, np.uint8)
        padded[:, : row.shape[1]] = row
        canvas += [padded, np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(canvas)


def write_pictures(model, images, masks, predictions, output, count):
    """Per sample: input, ground truth, prediction, offset fields; plus a summary panel."""
    palette = np.asarray(data.SYNTHETIC_COLORS, np.uint8)
    panel_rows = []
    for index in range(min(count, len(images))):
        prefix = os.path.join(output, f"sample{index}")
        image = images[index]
        truth = visualize.overlay(image, masks[index], palette)
        prediction = visualize.overlay(image, predictions[index], palette)
        visualize.save_png(f"{prefix}_input.png", image)
        visualize.save_png(f"{prefix}_ground_truth.png", truth)
        visualize.save_png(f"{prefix}_prediction.png", prediction)
        offsets = visualize.offset_images(model, image)
        for module, picture in offsets.items():
            visualize.save_png(f"{prefix}_offsets_{module}.png", picture)
        if index < 2:
            white = np.full((image.shape[0], 4, 3), 255, np.uint8)
            panel_rows.append(np.concatenate([image, white, truth, white, prediction], axis=1))
            panel_rows.append(offsets["align_fa5"])
    # Rows: input | ground truth | prediction, then AlignFA5's two offset fields.
    visualize.save_png(os.path.join(output, "demo.png"), stack_rows(panel_rows))


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output, exist_ok=True)
    class_names = list(data.SYNTHETIC_CLASSES)
    start = time.time()
    model = train(args, len(class_names))
    print(f"Trained {args.steps} steps in {time.time() - start:.0f} s")
    images, masks = data.synthetic_scene_arrays(
        args.val_images, tuple(args.image_size), seed=args.seed + 1
    )
    predictions, miou = evaluate(model, images, masks, class_names)
    model.save(os.path.join(args.output, "model.keras"))
    write_pictures(model, images, masks, predictions, args.output, args.pictures)
    print(f"Pictures and model.keras written to {args.output}/")
    print(f"mIoU: {miou:.4f}")


if __name__ == "__main__":
    main()
