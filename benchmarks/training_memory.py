"""Where a training step's memory goes, ours beside the authors' network.

    python -m benchmarks.training_memory                          # 512x512, batch 2 (~8 min)
    python -m benchmarks.training_memory --size 256 256 --batch 1
    python -m benchmarks.training_memory --one --side keras --part network_resize

Each (part, side) runs in a fresh process on TensorFlow (ours) or PyTorch (the
authors' network of `tests/torch_reference.py`, float32, training mode) and
reports its peak resident memory (VmHWM) minus its memory once the model and
inputs exist, in MiB, over 3 calls; and the same less the pages mapped from files
(`benchmarks.timing.file_backed_rss_mib`: mostly the libraries' code, which TensorFlow
pages in as its kernels are first used):

- `encoder`: forward and backward of the encoder alone (the loss is the sum of
  the means of its four pyramid outputs);
- `network`: forward and backward of the whole network (the loss is the sum of
  the means of both heads' logits);
- `network_resize` (ours only): the same with every `AlignmentLayer` replaced by
  bilinear resizing to its output size (the offsets only feed a zero term), an
  upper bound of what the sampler itself adds;
- `loss`: the same with the training loss instead of the sum of means
  (cross-entropy with the ignore label on both heads' logits at the labels'
  size, the deep-supervision head weighted as in `step`), no optimizer;
- `step`: one training step as `benchmarks.authors` measures it (loss,
  gradients, SGD with momentum and weight decay); the optimizer's momentum
  buffers exist before it on both sides and are not counted.

The parts are not timed: the other processes of the machine may run beside
them. Results are printed as a table, not stored.
"""

import argparse
import json
import os
import sys

from benchmarks.authors import AUX_LOSS_WEIGHT
from benchmarks.authors import ROOT
from benchmarks.authors import random_batch
from benchmarks.models import NUM_CLASSES

PARTS = ("encoder", "network", "network_resize", "loss", "step")
SIDES = ("keras", "torch")
CALLS = 3


def _resize_instead_of_sampling():
    """Every AlignmentLayer resizes bilinearly to its output size instead of sampling."""
    from keras import ops

    from alignseg_keras.layers import alignment

    def call(self, inputs):
        features, offsets = inputs
        size = (ops.shape(offsets)[1], ops.shape(offsets)[2])
        return alignment.resize_bilinear(features, size) + ops.cast(ops.mean(offsets) * 0.0, features.dtype)

    alignment.AlignmentLayer.call = call


def keras_call(part, images, labels, depth=101):
    """A function running `part` of our training step once, in graph mode."""
    import tensorflow as tf

    from benchmarks.authors import keras_step

    if part == "step":
        return keras_step("training", "float32", images, labels, depth=depth)
    from alignseg_keras import AlignSeg
    from alignseg_keras.models.presets import OFFICIAL_PRESETS

    if part == "network_resize":
        _resize_instead_of_sampling()
    model = AlignSeg.from_preset(OFFICIAL_PRESETS[depth], num_classes=NUM_CLASSES)
    network = model.image_encoder if part == "encoder" else model
    inputs = tf.constant(images)

    if part == "loss":
        model.compile(metrics=[], aux_loss_weight=AUX_LOSS_WEIGHT)
    targets = tf.constant(labels)

    def loss_of(x):
        outputs = network(x, training=True)
        if part == "loss":
            return model.compute_loss(x, targets, outputs)
        return tf.add_n([tf.reduce_mean(output) for output in tf.nest.flatten(outputs)])

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = loss_of(x)
        gradients = tape.gradient(loss, network.trainable_variables, unconnected_gradients="zero")
        return tf.add_n([tf.reduce_sum(gradient) for gradient in gradients])

    return lambda: forward_backward(inputs)


def torch_call(part, images, labels, depth=101):
    """A function running `part` of the authors' training step once, eagerly."""
    from benchmarks.authors import torch_step

    if part == "step":
        return torch_step("training", "float32", images, labels, depth=depth)
    import torch

    from benchmarks.authors import torch_training_loss

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from torch_reference import ReferenceAlignSeg
    from torch_reference import randomize

    model = randomize(ReferenceAlignSeg(NUM_CLASSES, depth)).train()
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    targets = torch.from_numpy(labels).long()

    def loss_of(outputs):
        if part == "loss":
            return torch_training_loss(outputs, targets)
        return sum(output.mean() for output in outputs)

    def forward_backward():
        loss_of(model.backbone(inputs) if part == "encoder" else model(inputs)).backward()
        model.zero_grad(set_to_none=True)

    return forward_backward


def measure(side, part, size, batch, depth=101):
    """Peak memory of `part` on `side` in this process, in MiB above the built model."""
    from benchmarks.timing import resident_memory_after
    from benchmarks.timing import resident_memory_before

    images, labels = random_batch(tuple(size), batch)
    call = (keras_call if side == "keras" else torch_call)(part, images, labels, depth)
    before = resident_memory_before()
    for _ in range(CALLS):
        call()
    memory = resident_memory_after(before)
    return {"side": side, "part": part, **memory, "held_mib": memory["peak_rss_mib"] - memory["rss_before_mib"],
            "held_anonymous_mib": memory["peak_anonymous_mib"] - memory["anonymous_before_mib"]}


def measure_all(size, batch):
    from benchmarks.timing import json_of_process

    for part in PARTS:
        for side in SIDES:
            if side == "torch" and part == "network_resize":
                continue
            command = [sys.executable, "-m", "benchmarks.training_memory", "--one", "--side", side,
                       "--part", part, "--size", *map(str, size), "--batch", str(batch)]
            yield json_of_process(command, ROOT, "tensorflow")


def table(entries, size, batch):
    lines = [f"Peak minus built, MiB, training mode, {size[0]}x{size[1]}, batch {batch}, float32; "
             "the whole process, and less its file-backed pages:", "",
             "| Part | Ours | Authors' | Ours - authors' | Ours, anonymous | Authors', anonymous "
             "| Ours - authors', anonymous |", "|---|---|---|---|---|---|---|"]
    for part in PARTS:
        cells = []
        for key in ("held_mib", "held_anonymous_mib"):
            held = {entry["side"]: entry[key] for entry in entries if entry["part"] == part}
            ours, theirs = held.get("keras"), held.get("torch")
            if ours is None:
                break
            difference = f"{ours - theirs:+.0f}" if theirs is not None else ""
            cells += [f"{ours:.0f}", "" if theirs is None else f"{theirs:.0f}", difference]
        if cells:
            lines.append(f"| {part} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--one", action="store_true", help="measure one (side, part) in this process")
    parser.add_argument("--side", choices=SIDES, default="keras")
    parser.add_argument("--part", choices=PARTS, default="step")
    parser.add_argument("--depth", type=int, choices=(50, 101), default=101)
    args = parser.parse_args(argv)
    if args.one:
        if args.side == "torch" and args.part == "network_resize":
            parser.error("`network_resize` exists on our side only.")
        print(json.dumps(measure(args.side, args.part, args.size, args.batch, args.depth)), flush=True)
        return
    entries = []
    for entry in measure_all(args.size, args.batch):
        print(json.dumps(entry), flush=True)
        entries.append(entry)
    print(table(entries, args.size, args.batch))


if __name__ == "__main__":
    main()
