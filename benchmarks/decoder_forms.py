"""The official preset with and without the fused resize, AlignFA's split heads, the fused sampler, the shifted offset convolutions and BN folding, in one process.

    python -m benchmarks.decoder_forms --kind inference --precision bfloat16 --rounds 12
    python -m benchmarks.decoder_forms --kind training --precision float32 --rounds 4
    python -m benchmarks.decoder_forms --kind training --forms fused_sampler shifted_offsets

Six forms of the same network, each traced into its own compiled function, then
timed round-robin (the effects are a few percent, smaller than the spread between
fresh processes on a shared machine):

- `before`: `resize_bilinear` in `keras.ops` and AlignFA's offset heads on the
  concatenation `[A, up(F)]` (the code before 2026-12-03);
- `fused_resize`: TensorFlow's fused resize kernel, heads on the concatenation;
- `split`: the fused resize and the heads as `W_A A + up(W_F F)`;
- `fused_sampler`: `split` with the alignment's forward sampling by TensorFlow's
  `CropAndResize` (`alignseg_keras.fused_sampler`); the forms above sample with
  `gathered_bilinear_sample`;
- `shifted_offsets`: `fused_sampler` with the offset heads' 3x3 convolution to 2
  channels as `convolution_by_shifted_products` (the library's model as built); the
  forms above call the `offsets` Conv2D layer;
- `folded` (inference only): `shifted_offsets` with BatchNormalization folded into
  the convolutions (`fold_batch_normalization`), as the inference functions run
  a model in bfloat16.

The older forms are made by replacing, while their functions are traced,
`OffsetHead.call_on_upsampled_pair` with the concatenated form,
`OffsetHead._offsets_from_hidden` with the Conv2D layer's call, and the fused
resize's and fused sampler's tests with False (`--forms` times a subset). Prints one JSON line: the minimum and median seconds of
each form. The figures of docs/benchmarks.md ("AlignFA's split offset heads"
"Fused bilinear sampling", "Offset convolutions as shifted matrix products" and
"BatchNormalization folded for inference") come
from this script.
"""

import argparse
import contextlib
import json
import statistics
import time

from benchmarks import authors

FORMS = ("before", "fused_resize", "split", "fused_sampler", "shifted_offsets", "folded")


def _concatenated_pair(head, high, low, training=None):
    """OffsetHead on `[high, up(low)]`: the paper's form of the split."""
    from keras import ops

    from alignseg_keras.layers.alignment import resize_bilinear

    upsampled = resize_bilinear(low, (ops.shape(high)[1], ops.shape(high)[2]))
    return head(ops.concatenate([high, upsampled], axis=-1), training=training)


def _offsets_by_convolution(head, hidden):
    """The offset head's 3x3 convolution by its Conv2D layer: the form before the shifted products."""
    return head.offsets(hidden)


@contextlib.contextmanager
def decoder_form(form):
    """While active, layers traced compute AlignFA in `form` (one of `FORMS`)."""
    from alignseg_keras.layers import alignment
    from alignseg_keras.layers.offset_head import OffsetHead

    split, fused = OffsetHead.call_on_upsampled_pair, alignment._uses_fused_resize
    sampler, shifted = alignment._uses_fused_sampler, OffsetHead._offsets_from_hidden
    if form == "before":
        alignment._uses_fused_resize = lambda images: False
    if form in ("before", "fused_resize"):
        OffsetHead.call_on_upsampled_pair = _concatenated_pair
    if form in ("before", "fused_resize", "split"):
        alignment._uses_fused_sampler = lambda features: False
    if form in ("before", "fused_resize", "split", "fused_sampler"):
        OffsetHead._offsets_from_hidden = _offsets_by_convolution
    try:
        yield
    finally:
        OffsetHead.call_on_upsampled_pair, alignment._uses_fused_resize = split, fused
        alignment._uses_fused_sampler, OffsetHead._offsets_from_hidden = sampler, shifted


def measure(kind, precision, rounds, size=(512, 512), depth=101, forms=None):
    """Times `forms` (by default every form of `kind`) round-robin; see the module's docstring."""
    batch = 1 if kind == "inference" else 2
    images, labels = authors.random_batch(tuple(size), batch)
    steps = {}
    forms = forms or [form for form in FORMS if kind == "inference" or form != "folded"]
    if kind == "training" and "folded" in forms:
        raise ValueError("decoder_forms: the form 'folded' is for inference only.")
    for form in forms:
        with decoder_form(form):
            step = authors.keras_step(
                kind, precision, images, labels, depth=depth, fold_batch_norm=form == "folded"
            )
            step()  # traces (training: the first train_on_batch traces the train step)
        step()
        steps[form] = step
    times = {form: [] for form in forms}
    for _ in range(rounds):
        for form, step in steps.items():
            start = time.perf_counter()
            step()
            times[form].append(time.perf_counter() - start)
    return {"kind": kind, "precision": precision, "size": list(size), "batch": batch,
            "rounds": rounds,
            "min_seconds": {form: min(values) for form, values in times.items()},
            "median_seconds": {form: statistics.median(values) for form, values in times.items()}}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=authors.KINDS, default="inference")
    parser.add_argument("--precision", choices=authors.PRECISIONS, default="float32")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--depth", type=int, choices=(50, 101), default=101)
    parser.add_argument("--forms", nargs="+", choices=FORMS, help="the forms to time (default: all of --kind)")
    return parser.parse_args(argv)


def main(argv=None):
    from benchmarks import backends

    backends.select_backend()
    args = parse(argv)
    result = measure(args.kind, args.precision, args.rounds, args.size, args.depth, args.forms)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
