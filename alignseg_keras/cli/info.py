"""`alignseg info`: parameters and compute (GMACs, GFLOPs) of a model, per part.

Like mmsegmentation's `tools/analysis_tools/get_flops.py`, counted analytically
by `alignseg_keras.model_cost` from the layers and their shapes at `--size`
(nothing is run). One multiply-accumulate (MAC) is 2 FLOPs: the table prints
both; mmsegmentation's "GFLOPs" are GMACs.
"""

import json
import re

from alignseg_keras.cli.common import add_model_arguments
from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES

DEFAULT_SIZE = "1024x2048"


def parse_size(text):
    """`"HxW"` (or one number for a square) -> `(height, width)`."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise ValueError(
            f"--size {text!r}: give HEIGHTxWIDTH in pixels (e.g. {DEFAULT_SIZE}), or one "
            "number for a square."
        )
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "info",
        help="parameters and GMACs/GFLOPs of a model, per part",
        description="Print the parameters and the compute of one forward pass of a .keras "
        "model or a preset, for one image of --size, per part (the image encoder, every "
        "decoder module, the heads) and in total, counted analytically from the layers "
        "(alignseg_keras.model_cost). 1 MAC (multiply-accumulate) = 2 FLOPs; "
        "mmsegmentation's get_flops reports MACs under the name FLOPs. Biases and "
        "element-wise operations are not counted; BatchNorm is 1 MAC per element; bilinear "
        "resizing and the alignment sampler 4 MACs per output element. Parts marked "
        "'training only' (the deep-supervision head) are outside the total.",
    )
    add_model_arguments(parser, "describe")
    parser.add_argument("--num-classes", type=int,
                        help=f"classes of a named --preset (default {DEFAULT_NUM_CLASSES}); "
                        "a preset directory or .keras file has its own")
    parser.add_argument("--size", default=DEFAULT_SIZE, metavar="HxW",
                        help=f"input image size, height x width (default {DEFAULT_SIZE})")
    parser.add_argument("--json", action="store_true",
                        help="print the counts as JSON instead of a table")
    from alignseg_keras.model_cost import OFFSET_HEAD_COUNTS

    parser.add_argument("--offset-heads", choices=OFFSET_HEAD_COUNTS, default=OFFSET_HEAD_COUNTS[0],
                        help="count AlignFA's offset heads as the paper defines them (a 1x1 "
                        "convolution over [A, up(F)], the default, comparable with the authors' "
                        "network) or as this library computes them (W_A A + up(W_F F))")
    parser.set_defaults(func=run)


def _giga(value):
    return f"{value / 1e9:,.2f}"


def format_table(cost, title=""):
    """The table of a `ModelCost`: part | parameters | GMACs | GFLOPs | share."""
    header = ("part", "parameters", "GMACs", "GFLOPs", "share")
    lines = []

    def row(part, parameters, macs, share):
        return (part, f"{parameters:,}", _giga(macs), _giga(2 * macs), share)

    inference = [r for r in cost.rows if not r.training_only and (r.parameters or r.macs)]
    training = [r for r in cost.rows if r.training_only and (r.parameters or r.macs)]
    body = [
        row(r.part, r.parameters, r.macs, f"{100 * r.macs / cost.macs:.1f}%" if cost.macs
            else "-")
        for r in inference
    ]
    total = [row("total (inference)", cost.inference_parameters, cost.macs, "100.0%")]
    extra = [row(f"{r.part} (training only)", r.parameters, r.macs, "-") for r in training]
    if training:
        extra.append(row("total with training-only parts", cost.parameters,
                         cost.training_macs, "-"))
    everything = [header] + body + total + extra
    widths = [max(len(cells[i]) for cells in everything) for i in range(len(header))]

    def render(cells):
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        )

    rule = "  ".join("-" * width for width in widths)
    if title:
        lines.append(title)
    lines += [render(header), rule] + [render(cells) for cells in body]
    lines += [rule] + [render(cells) for cells in total]
    if extra:
        lines += [render(cells) for cells in extra]
    by_kind = cost.macs_by_kind()
    lines.append(
        "GMACs by kind (inference): "
        + ", ".join(f"{kind} {_giga(value)}" for kind, value in by_kind.items())
    )
    lines.append(
        "1 MAC = 2 FLOPs; biases and element-wise operations not counted; BatchNorm 1 MAC "
        "per element; bilinear resize and alignment sampler 4 MACs per output element; "
        "pooling 1 per input element."
    )
    return "\n".join(lines)


def uncounted_lines(cost):
    """Warnings about the layers without a counting rule (counted as 0)."""
    lines = []
    weighted = [(path, kind) for path, kind, weights in cost.uncounted if weights]
    others = [(path, kind) for path, kind, weights in cost.uncounted if not weights]
    if weighted:
        lines.append(
            "alignseg info: warning: no counting rule for these layers with weights; their "
            "MACs are NOT in the totals: "
            + ", ".join(f"{path} ({kind})" for path, kind in weighted)
        )
    if others:
        lines.append(
            "alignseg info: note: no counting rule for these layers without weights (counted "
            "as 0): " + ", ".join(f"{path} ({kind})" for path, kind in others)
        )
    return lines


def run(args):
    import sys

    from alignseg_keras.cli.common import load_model
    from alignseg_keras.cli.common import model_name
    from alignseg_keras.model_cost import model_cost
    from alignseg_keras.models.preset_files import is_preset_directory

    size = parse_size(args.size)
    if args.num_classes is not None and (args.model or is_preset_directory(args.preset)):
        raise ValueError(
            "--num-classes sets the classes of a named --preset; "
            f"{model_name(args)} has its own."
        )
    model = load_model(args, args.num_classes)
    cost = model_cost(model, size, offset_heads=args.offset_heads)
    if args.json:
        print(json.dumps({"model": model_name(args), **cost.to_dict()}, indent=2))
    else:
        print(format_table(cost, f"{model_name(args)} at {size[0]}x{size[1]} (one image)"))
    for line in uncounted_lines(cost):
        print(line, file=sys.stderr)
    return 0
