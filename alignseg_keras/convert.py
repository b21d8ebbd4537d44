"""The authors' released PyTorch checkpoints (speedinghzl/AlignSeg) in Keras, and back.

The authors' network (`networks/alignseg.py`) names its modules `conv1`,
`layer3.22.conv2`, `RRB2a.residual.1`, `CAB3.delta_gen1.2`, `CAM.pool.3`,
`dsn.0`, `head.3`, ...; `OFFICIAL_PRESETS` builds the same network in Keras and
`official_weight_map` pairs every PyTorch tensor with its Keras variable:

    PyTorch module            Keras layer
    conv1, bn1, ...           conv1, bn1, ... (backbone)
    layerS.B.convK / bnK      layerS_B_convK / layerS_B_bnK
    layerS.B.downsample.0/1   layerS_B_downsample_0 / _1
    RRBxy.unify               rcbxy/unify
    RRBxy.residual.0/1/2      rcbxy/residual_reduce/conv, .../norm, rcbxy/residual_expand
    RRBxy.norm                rcbxy/norm
    CABx.delta_gen1.0/1/2     align_fax/low_resolution_offsets/hidden/conv, .../norm, .../offsets
    CABx.delta_gen2.*         align_fax/high_resolution_offsets/*
    CAM.pool.1/2/3/4          align_cm/context_reduce/conv, /norm, context_project/conv, /norm
    CAM.adapt.0/1/2/3         align_cm/local_reduce/conv, /norm, local_project/conv, /norm
    CAM.delta_gen.0/1/2       align_cm/offset_head/hidden/conv, .../norm, .../offsets
    head.0/1/3, dsn.0/1/3     head/hidden/conv, /norm, head/classifier (dsn: auxiliary_head)

Convolution weights go from PyTorch's (out, in, kh, kw) to Keras' (kh, kw, in,
out). Every normalisation layer of the authors' network, the backbone's too, is
an `InPlaceABNSync` (mapillary/inplace_abn), which is not plain BatchNorm: its
forward pass scales by `(|weight| + eps) / sqrt(running_var + eps)` (eps 1e-5),
so that its in-place backward can invert the affine map. Its `weight` w becomes
the Keras BatchNormalization `gamma = |w| + eps` (a trained network can hold
negative weights; the library uses their absolute value), and `bias`,
`running_mean` and `running_var` become `beta`, `moving_mean` and
`moving_variance`; `num_batches_tracked` carries no information for inference
and is ignored. Export writes `w = gamma - eps`, which the library reads back
as the same `gamma`.
"""

import collections
import dataclasses
import os

import keras
import numpy as np

from alignseg_keras.backbones.resnet import STAGE_BLOCKS as RESNET_STAGE_BLOCKS
from alignseg_keras.models.presets import DEFAULT_NUM_CLASSES
from alignseg_keras.models.presets import OFFICIAL_PRESETS

BACKBONE_DEPTHS = {"resnet50_deepstem": 50, "resnet101_deepstem": 101}
# Bottleneck blocks per stage of the deep-stem ResNets, by depth: the backbone's own
# table (alignseg_keras.backbones.resnet.STAGE_BLOCKS), keyed by depth.
STAGE_BLOCKS = {
    depth: tuple(RESNET_STAGE_BLOCKS[name]) for name, depth in BACKBONE_DEPTHS.items()
}

CONV = (("weight", "kernel"),)
CONV_WITH_BIAS = (("weight", "kernel"), ("bias", "bias"))
NORM = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)
# Counts training batches in PyTorch's BatchNorm; no Keras counterpart.
BATCH_COUNTER = "num_batches_tracked"
CLASSIFIERS = ("head.3", "dsn.3")
# InPlaceABN's default eps, which the authors keep. The Keras BatchNormalization
# layers use the same value (`conv_norm_activation.BN_EPSILON`, checked by a
# test), so the variance term `sqrt(var + eps)` matches as well.
INPLACE_ABN_EPSILON = 1e-5
# The ImageNet classifier of a backbone checkpoint; a segmentation model has none.
IMAGENET_CLASSIFIER = ("fc.weight", "fc.bias")
TORCH_INSTALL_HINT = (
    "Reading a PyTorch checkpoint needs PyTorch: `pip install alignseg-keras[torch]` "
    "(or `pip install torch`), or pass a dict of NumPy arrays instead."
)


def _backbone_modules(stage_blocks):
    """(PyTorch module, Keras layer, parameters) of the deep-stem ResNet."""
    modules = []
    for index in (1, 2, 3):
        modules += [(f"conv{index}", f"conv{index}", CONV), (f"bn{index}", f"bn{index}", NORM)]
    for stage, blocks in enumerate(stage_blocks, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            for index in (1, 2, 3):
                for kind, params in (("conv", CONV), ("bn", NORM)):
                    name = f"{prefix}.{kind}{index}"
                    modules.append((name, name.replace(".", "_"), params))
            if block == 0:
                for index, params in ((0, CONV), (1, NORM)):
                    name = f"{prefix}.downsample.{index}"
                    modules.append((name, name.replace(".", "_"), params))
    return modules


def _residual_block_modules(official, keras_name):
    """The code's `RRB` and the Keras `ResidualConvBlock`."""
    return [
        (f"{official}.unify", f"{keras_name}/unify", CONV),
        (f"{official}.residual.0", f"{keras_name}/residual_reduce/conv", CONV),
        (f"{official}.residual.1", f"{keras_name}/residual_reduce/norm", NORM),
        (f"{official}.residual.2", f"{keras_name}/residual_expand", CONV),
        (f"{official}.norm", f"{keras_name}/norm", NORM),
    ]


def _offset_head_modules(official, keras_name):
    """The code's `delta_gen` (conv, ABN, conv) and the Keras `OffsetHead`."""
    return [
        (f"{official}.0", f"{keras_name}/hidden/conv", CONV),
        (f"{official}.1", f"{keras_name}/hidden/norm", NORM),
        (f"{official}.2", f"{keras_name}/offsets", CONV),
    ]


def _conv_norm_pair(official, conv_index, keras_name):
    """A conv at `official.i` and its ABN at `official.(i+1)`: a `ConvNormActivation`."""
    return [
        (f"{official}.{conv_index}", f"{keras_name}/conv", CONV),
        (f"{official}.{conv_index + 1}", f"{keras_name}/norm", NORM),
    ]


def _context_modules():
    """The code's `CAM` and the Keras `AlignCM` (index 0 of `CAM.pool` is the pooling)."""
    return (
        _conv_norm_pair("CAM.pool", 1, "align_cm/context_reduce")
        + _conv_norm_pair("CAM.pool", 3, "align_cm/context_project")
        + _conv_norm_pair("CAM.adapt", 0, "align_cm/local_reduce")
        + _conv_norm_pair("CAM.adapt", 2, "align_cm/local_project")
        + _offset_head_modules("CAM.delta_gen", "align_cm/offset_head")
    )


def _head_modules(official, keras_name):
    """The code's `head` / `dsn` (conv, ABN, dropout, conv) and `SegmentationHead`."""
    return [
        (f"{official}.0", f"{keras_name}/hidden/conv", CONV_WITH_BIAS),
        (f"{official}.1", f"{keras_name}/hidden/norm", NORM),
        (f"{official}.3", f"{keras_name}/classifier", CONV_WITH_BIAS),
    ]


def official_module_map(depth=101):
    """Every parametrised module of the authors' network and its Keras layer.

    Args:
        depth: 50 or 101, the backbone's depth.

    Returns:
        A list of `(pytorch_module, keras_layer_path, parameters)` in the order
        of the authors' `state_dict`; `parameters` pairs PyTorch parameter names
        with Keras variable names.

    Example:
    ```python
    modules = official_module_map(101)
    # ("RRB2a.residual.1", "rcb2a/residual_reduce/norm", NORM) is among them.
    ```
    """
    modules = _backbone_modules(_stage_blocks(depth)) + _context_modules()
    for stage in (5, 4, 3, 2):
        modules += _residual_block_modules(f"RRB{stage}a", f"rcb{stage}a")
        for offsets, keras_name in (("delta_gen1", "low"), ("delta_gen2", "high")):
            modules += _offset_head_modules(
                f"CAB{stage}.{offsets}", f"align_fa{stage}/{keras_name}_resolution_offsets"
            )
        modules += _residual_block_modules(f"RRB{stage}b", f"rcb{stage}b")
    modules += _residual_block_modules("RRB1a", "rcb1a")
    return modules + _head_modules("dsn", "auxiliary_head") + _head_modules("head", "head")


def official_weight_map(depth=101):
    """PyTorch tensor name -> Keras variable path, in the authors' `state_dict` order.

    `num_batches_tracked` entries are left out (they have no Keras counterpart).

    Example:
    ```python
    official_weight_map(101)["CAB3.delta_gen1.2.weight"]
    # 'align_fa3/low_resolution_offsets/offsets/kernel'
    ```
    """
    return _weight_map(official_module_map(depth))


def backbone_weight_map(depth=101):
    """PyTorch tensor name -> Keras variable path for the deep-stem ResNet alone.

    The names of an ImageNet checkpoint of the authors' backbone (`conv1`,
    `bn1`, ..., `layer4.2.bn3`), without its `fc` classifier.

    Example:
    ```python
    backbone_weight_map(101)["layer3.22.bn2.weight"]  # 'layer3_22_bn2/gamma'
    ```
    """
    return _weight_map(_backbone_modules(_stage_blocks(depth)))


def _weight_map(modules):
    return {
        f"{module}.{torch_name}": f"{layer}/{keras_name}"
        for module, layer, params in modules
        for torch_name, keras_name in params
    }


def _batch_counters(modules):
    """The `num_batches_tracked` names of every BatchNorm among `modules`."""
    return [f"{module}.{BATCH_COUNTER}" for module, _, params in modules if params is NORM]


def _stage_blocks(depth):
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"The authors' backbone is ResNet-50 or -101; received depth={depth!r}.")
    return STAGE_BLOCKS[depth]


KERAS_TO_TORCH_AXES = (3, 2, 0, 1)  # conv kernels: (kh, kw, in, out) -> (out, in, kh, kw)
TORCH_TO_KERAS_AXES = (2, 3, 1, 0)


def _is_conv_weight(name, shape):
    return name.endswith(".weight") and len(shape) == 4


def torch_to_keras(name, array):
    """Converts one PyTorch tensor (NumPy) to its Keras layout: conv OIHW -> HWIO."""
    array = np.asarray(array)
    return array.transpose(TORCH_TO_KERAS_AXES) if _is_conv_weight(name, array.shape) else array


def keras_to_torch(name, array):
    """Converts one Keras variable (NumPy) to the PyTorch layout: conv HWIO -> OIHW."""
    array = np.asarray(array)
    return array.transpose(KERAS_TO_TORCH_AXES) if _is_conv_weight(name, array.shape) else array


def torch_shape(name, keras_shape):
    """The PyTorch shape of the tensor `name` whose Keras variable has `keras_shape`."""
    keras_shape = tuple(int(size) for size in keras_shape)
    if _is_conv_weight(name, keras_shape):
        return tuple(keras_shape[axis] for axis in KERAS_TO_TORCH_AXES)
    return keras_shape


def abn_weight_to_gamma(weight):
    """The Keras BatchNormalization `gamma` that computes what InPlaceABN does with `weight`.

    InPlaceABN scales by `(|weight| + eps) / sqrt(var + eps)`
    (mapillary/inplace_abn, `forward_cpu` and its CUDA kernel), so the
    equivalent plain BatchNorm has `gamma = |weight| + eps`, computed in float32
    as the library does.

    Example:
    ```python
    abn_weight_to_gamma(np.array([0.5, -0.5], "float32"))  # [0.50001, 0.50001]
    ```
    """
    return np.abs(np.asarray(weight, "float32")) + np.float32(INPLACE_ABN_EPSILON)


def gamma_to_abn_weight(gamma):
    """The InPlaceABN `weight` whose `|weight| + eps` is `gamma`: `gamma - eps`.

    Exact for `gamma >= eps` (up to float32 rounding); smaller or negative
    scales have no InPlaceABN equivalent (`export_official_state_dict` refuses
    them).
    """
    return np.asarray(gamma, "float32") - np.float32(INPLACE_ABN_EPSILON)


def _is_gamma(keras_path):
    return keras_path.endswith("/gamma")


def _to_numpy(value):
    """A NumPy array from a NumPy array, a list or a (CPU or GPU) torch tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _torch_load(path):
    import pickle

    try:
        import torch
    except ImportError as error:
        raise ImportError(TORCH_INSTALL_HINT) from error
    try:
        # weights_only=True: tensors and plain containers only, never arbitrary code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's refusal of other objects: "Unsupported global" (torch >= 2.4), "Unsupported
        # class" before; any other failure of the unpickler is a damaged or foreign file.
        if not any(refusal in str(error) for refusal in ("Unsupported global",
                                                          "Unsupported class")):
            raise ValueError(
                f"Cannot read {path!r} as a PyTorch checkpoint (UnpicklingError: "
                f"{_unpickler_reason(error)}): the file is damaged (an interrupted download "
                "or copy?) or not a PyTorch checkpoint."
            ) from error
        raise ValueError(
            f"Cannot read {path!r} as a PyTorch checkpoint of tensors: "
            f"{_without_terminal_codes(error)}\nOnly tensors and plain containers are read "
            "(weights_only=True); for a file you trust that holds other objects, torch.load "
            "it yourself and pass its state_dict."
        ) from error
    except Exception as error:  # torch raises many types for unreadable files
        raise ValueError(
            f"Cannot read {path!r} as a PyTorch checkpoint ({type(error).__name__}: "
            f"{_without_terminal_codes(error)}): the file is damaged (an interrupted "
            "download or copy?) or not a PyTorch checkpoint."
        ) from error


def _unpickler_reason(error):
    """What went wrong, from torch's weights-only error: the text after its
    "WeightsUnpickler error:" (on that line or the next), without its advice to load
    with `weights_only=False`."""
    marker = "WeightsUnpickler error:"
    text = _without_terminal_codes(error)
    if marker in text:
        after = text.split(marker, 1)[1].strip()
        if after:
            return after.splitlines()[0].strip()
    return "not a file torch.save writes"


def _without_terminal_codes(error):
    """The text of `error` without the terminal's colour codes torch puts in some."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


def _is_torch_zip(path):
    """Whether `path` is a zip written by `torch.save` (it holds a `data.pkl`)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _npz_load(path):
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as error:  # zipfile, zlib and NumPy raise many types for bad files
        raise ValueError(
            f"Cannot read {path!r} as a NumPy .npz archive of arrays "
            f"({type(error).__name__}: {error}); it may be truncated or not an .npz file."
        ) from error


def read_state_dict(source):
    """Reads a checkpoint into a dict of name -> NumPy array.

    Args:
        source: a path to a PyTorch `.pth`/`.pt` file (read with
            `torch.load(..., weights_only=True)`) or an `.npz` file, or a dict
            of name -> NumPy array or torch tensor. A checkpoint that wraps its
            weights in `{"state_dict": ...}` or `{"model": ...}` is unwrapped,
            and a `module.` prefix (DistributedDataParallel) is removed.

    Example:
    ```python
    state = read_state_dict("alignseg_cityscapes.pth")
    state["head.3.weight"].shape  # (19, 256, 1, 1)
    ```
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No checkpoint file at {path!r}.")
        # By content: a torch.save file renamed .npz read as an archive of 558 byte arrays.
        if path.endswith(".npz") and not _is_torch_zip(path):
            source = _npz_load(path)
        else:
            source = _torch_load(path)
    if not isinstance(source, dict):
        raise ValueError(
            "A checkpoint must be a path or a dict of name -> array; "
            f"received {type(source).__name__}."
        )
    source = _unwrapped(source)
    if source and all(str(name).startswith("module.") for name in source):
        source = {name[len("module."):]: value for name, value in source.items()}
    return {str(name): _to_numpy(value) for name, value in source.items()}


def _unwrapped(checkpoint):
    """The dict of tensors inside a training script's checkpoint: under `state_dict` or
    `model`, or the one value that is a dict of tensors (`{"epoch": 9, "net": {...}}`)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), dict):
            return checkpoint[wrapper]
    if any(_is_tensor(value) and np.ndim(value) for value in checkpoint.values()):
        return checkpoint  # tensors at the top: the state dict itself
    wrapped = [key for key, value in checkpoint.items() if isinstance(value, dict) and value
               and all(_is_tensor(item) for item in value.values())]
    if len(wrapped) == 1:
        return checkpoint[wrapped[0]]
    if len(wrapped) > 1:
        raise ValueError(
            f"The checkpoint holds several dicts of tensors ({', '.join(map(repr, wrapped))}); "
            "pass the one to convert: read_state_dict(torch.load(path, map_location=\"cpu\", "
            "weights_only=True)[key]).")
    return checkpoint


def _is_tensor(value):
    return hasattr(value, "detach") or isinstance(value, np.ndarray)


def infer_depth(state_dict):
    """50 or 101 from the number of `layer3` blocks; None when it cannot be told."""
    blocks = {name.split(".")[1] for name in state_dict if name.startswith("layer3.")}
    count = len(blocks)
    return next((depth for depth, stages in STAGE_BLOCKS.items() if stages[2] == count), None)


def infer_num_classes(state_dict):
    """The number of classes from `head.3.weight`; None when it is absent."""
    weight = state_dict.get("head.3.weight")
    return None if weight is None or weight.ndim < 1 else int(weight.shape[0])


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What loading a checkpoint did.

    Attributes:
        loaded: int, the number of tensors assigned to Keras weights.
        ignored: tuple of the checkpoint's names that were read but not used
            (`num_batches_tracked`, an ImageNet `fc`, skipped classifiers).
        negative_weights: dict of normalisation layer (PyTorch name) -> the
            number of its `weight` entries that are negative; InPlaceABN uses
            their absolute value, and so does the converted `gamma`.
        fresh_classifiers: tuple of the classifiers (`head.3`, `dsn.3`) left
            freshly initialised for another class count, and the checkpoint's
            class count first: `(19, "head.3", "dsn.3")`; empty when loaded.
    """

    loaded: int
    ignored: tuple
    negative_weights: dict
    fresh_classifiers: tuple = ()

    @property
    def negative_count(self):
        """The number of negative normalisation weights, over all layers."""
        return sum(self.negative_weights.values())

    def __str__(self):
        text = (
            f"Loaded {self.loaded} tensors; normalisation weights w read as InPlaceABN "
            f"does (gamma = |w| + {INPLACE_ABN_EPSILON:g}): {self.negative_count} negative "
            f"in {len(self.negative_weights)} layers"
        )
        if self.ignored:
            text += f"; ignored {len(self.ignored)} ({_summarise(self.ignored)})"
        text += "."
        if self.fresh_classifiers:
            classes, *names = self.fresh_classifiers
            held = "" if classes is None else f" (the checkpoint has {classes} classes)"
            text += (f" The classifiers {' and '.join(names)} were not loaded{held}: they "
                     "start freshly initialised, for fine-tuning on other classes.")
        return text


def _summarise(names, listed=4):
    """A few names as they are; more as counts of their last part."""
    if len(names) <= listed:
        return ", ".join(names)
    kinds = collections.Counter(name.rsplit(".", 1)[-1] for name in names)
    return ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())


def _model_variables(model):
    variables = {}
    for variable in model.weights:
        if variable.path in variables:
            raise ValueError(
                f"The model has two variables at {variable.path!r}; it is not an "
                "AlignSeg official configuration."
            )
        variables[variable.path] = variable
    return variables


def _check_model_covered(weight_map, variables, preset, whole_model=True):
    """Every mapped path is a model weight; with `whole_model`, every weight is mapped."""
    uncovered = sorted(set(variables) - set(weight_map.values())) if whole_model else []
    absent = sorted(set(weight_map.values()) - set(variables))
    if uncovered or absent:
        raise ValueError(
            f"The model is not the authors' network ({preset}): "
            + "; ".join(
                f"{label}: {', '.join(paths)}"
                for label, paths in (
                    ("Keras weights with no PyTorch counterpart", uncovered),
                    ("Keras weights the mapping expects but the model lacks", absent),
                )
                if paths
            )
        )


# The names each section of a mismatch lists at most (a checkpoint of another network
# would list them all: 700 lines).
LISTED_NAMES = 40


def _mismatch_report(state_dict, expected_shapes, optional):
    """Missing, unexpected, mis-shaped and non-finite tensors, formatted; None when all match."""
    if state_dict and not any(name in state_dict for name in expected_shapes):
        names = list(state_dict)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return (f"none of its {len(names)} names is one of the {len(expected_shapes)} "
                f"tensors expected (its names: {shown})")
    missing = [name for name in expected_shapes if name not in state_dict]
    unexpected = [
        name for name in state_dict if name not in expected_shapes and name not in optional
    ]
    wrong_shape = [
        f"{name}: checkpoint {tuple(state_dict[name].shape)}, expected {shape}"
        for name, shape in expected_shapes.items()
        if name in state_dict and tuple(state_dict[name].shape) != shape
    ]
    not_finite = [
        f"{name}: {int(np.sum(~np.isfinite(state_dict[name])))} NaN or infinite values"
        for name in expected_shapes
        if name in state_dict
        and np.issubdtype(state_dict[name].dtype, np.floating)
        and not np.all(np.isfinite(state_dict[name]))
    ]
    sections = [
        f"{label} ({len(items)}):\n    " + "\n    ".join(_first_listed(items))
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong_shape),
            ("not finite", not_finite),
        )
        if items
    ]
    return "\n  ".join(sections) if sections else None


def _first_listed(items):
    if len(items) <= LISTED_NAMES:
        return items
    return [*items[:LISTED_NAMES], f"... and {len(items) - LISTED_NAMES} more"]


def _assign_strictly(variables, state_dict, weight_map, optional, target, hint=""):
    """Checks every tensor first, then assigns them all; returns a `ConversionReport`."""
    expected_shapes = {
        name: torch_shape(name, variables[path].shape) for name, path in weight_map.items()
    }
    report = _mismatch_report(state_dict, expected_shapes, optional)
    if report:
        raise ValueError(f"The checkpoint does not match {target}:\n  {report}{hint}")
    negative_weights = {}
    for name, path in weight_map.items():
        value = torch_to_keras(name, state_dict[name])
        if _is_gamma(path):
            if negative := int(np.sum(value < 0)):
                negative_weights[name.rsplit(".", 1)[0]] = negative
            value = abn_weight_to_gamma(value)
        variables[path].assign(value.astype(variables[path].dtype))
    ignored = tuple(name for name in state_dict if name not in weight_map)
    return ConversionReport(len(weight_map), ignored, negative_weights)


def _is_classifier(name):
    return name.rsplit(".", 1)[0] in CLASSIFIERS


def _official_model(preset, depth, num_classes, model_kwargs):
    """`AlignSeg.from_preset` for the given official preset, or the one of `depth`."""
    from alignseg_keras.models.alignseg import AlignSeg

    if preset is None:
        preset = OFFICIAL_PRESETS[depth or 101]
    if preset not in OFFICIAL_PRESETS.values():
        raise ValueError(
            f"`preset` must be one of {sorted(OFFICIAL_PRESETS.values())}; received {preset!r}."
        )
    return AlignSeg.from_preset(preset, num_classes=num_classes, **model_kwargs)


def load_official_checkpoint(
    source, num_classes=None, preset=None, verbose=False, **model_kwargs
):
    """Builds the authors' AlignSeg and loads one of their PyTorch checkpoints.

    The model is `AlignSeg.from_preset(preset)`, the exact network of the
    authors' code (deep-stem ResNet, InPlaceABN as BN + LeakyReLU(0.01) with
    `gamma = |weight| + eps`, their legacy sampler, BGR input minus their
    mean): in inference mode it returns the same logits as their PyTorch
    model. Loading is strict (see `load_official_weights`).

    Args:
        source: a `.pth` path (needs PyTorch; read with `weights_only=True`),
            an `.npz` path, or a dict of name -> NumPy array or torch tensor.
            A `module.` prefix (DistributedDataParallel) is removed.
        num_classes: int or None. None takes it from the checkpoint
            (`head.3.weight`). A different number keeps every pretrained weight
            but the two 1x1 classifiers (`head.3`, `dsn.3`), which stay freshly
            initialised: the starting point for fine-tuning on other classes.
        preset: `"alignseg_resnet101_official"`, `"alignseg_resnet50_official"`,
            or None to tell the depth from the checkpoint's `layer3` blocks.
        verbose: bool, print the `ConversionReport` (tensors loaded, negative
            normalisation weights, ignored names).
        **model_kwargs: `AlignSeg` arguments overriding the preset, e.g.
            `pad_to_multiple=32` or, for fine-tuning, `alignment="standard"`;
            `deep_supervision=False` builds an inference model without the
            auxiliary head (the checkpoint's `dsn.*` are then ignored).
            Arguments that change the weights' shapes make loading fail.

    Returns:
        An `AlignSeg` model with the checkpoint's weights.

    Raises:
        ImportError: a `.pth` file and no PyTorch.
        ValueError: the checkpoint does not match the network.

    Example:
    ```python
    model = load_official_checkpoint("alignseg_cityscapes.pth")
    logits = model.predict(rgb_images)  # (B, H, W, 19)
    ```
    """
    state_dict = read_state_dict(source)
    checkpoint_classes = infer_num_classes(state_dict)
    new_classifiers = num_classes is not None and checkpoint_classes not in (None, num_classes)
    if num_classes is None:
        num_classes = checkpoint_classes or DEFAULT_NUM_CLASSES
    model = _official_model(preset, infer_depth(state_dict), num_classes, model_kwargs)
    report = load_official_weights(model, state_dict, skip_classifiers=new_classifiers)
    if verbose:
        print(report)
    return model


def load_official_weights(model, source, skip_classifiers=False):
    """Loads the authors' tensors into an AlignSeg of an official configuration, in place.

    Strict: every tensor the model needs must be present with the right shape
    and finite values, and nothing else may be (`num_batches_tracked` is
    optional); all missing, unexpected, mis-shaped and non-finite names are
    listed in one error, and no weight is changed when there is one. Each
    InPlaceABN `weight` w becomes `gamma = |w| + eps` (see `abn_weight_to_gamma`).

    Args:
        model: an `AlignSeg` with the authors' backbone (`resnet50_deepstem` or
            `resnet101_deepstem`), e.g. from an official preset.
        source: a checkpoint path or dict, as for `read_state_dict`.
        skip_classifiers: bool, leave the two 1x1 classifiers (`head.3`,
            `dsn.3`) as they are and ignore them in the checkpoint, to start
            fine-tuning on other classes.

    Returns:
        A `ConversionReport`.

    Example:
    ```python
    model = AlignSeg.from_preset("alignseg_resnet101_official", num_classes=19)
    print(load_official_weights(model, "alignseg_cityscapes.pth"))
    ```
    """
    state_dict = read_state_dict(source)
    depth = _model_depth(model)
    weight_map = official_weight_map(depth)
    optional = set(_batch_counters(official_module_map(depth)))
    if not getattr(model, "deep_supervision", True):  # an inference model: no auxiliary head
        weight_map = {n: p for n, p in weight_map.items() if not n.startswith("dsn.")}
        optional |= {name for name in state_dict if name.startswith("dsn.")}
    variables = _model_variables(model)
    _check_model_covered(weight_map, variables, OFFICIAL_PRESETS[depth])
    fresh = ()
    if skip_classifiers:
        fresh = tuple(name for name in CLASSIFIERS if f"{name}.weight" in weight_map)
        fresh = (infer_num_classes(state_dict), *fresh)
        weight_map = {n: p for n, p in weight_map.items() if not _is_classifier(n)}
        optional |= {name for name in state_dict if _is_classifier(name)}
    target = f"{OFFICIAL_PRESETS[depth]} with {model.num_classes} classes"
    hint = ""
    if (not any(name.startswith(("head.", "dsn.")) for name in state_dict)
            and any(name.startswith("layer3.") for name in state_dict)):
        hint = (
            "\nThis checkpoint has no AlignSeg heads (head.*, dsn.*): for the authors' "
            "ImageNet backbone use load_backbone_checkpoint (alignseg convert --backbone-only)."
        )
    report = _assign_strictly(variables, state_dict, weight_map, optional, target, hint)
    return dataclasses.replace(report, fresh_classifiers=fresh)


def load_backbone_checkpoint(
    source, num_classes=DEFAULT_NUM_CLASSES, preset=None, verbose=False, **model_kwargs
):
    """Builds the authors' AlignSeg on their ImageNet-pretrained deep-stem ResNet.

    The authors train from the "MIT ImageNet-pretrained" ResNet-101
    (`resnet101-imagenet.pth` of CSAILVision's semantic-segmentation-pytorch;
    names `conv1, bn1, conv2, bn2, conv3, bn3, layer1..layer4, fc`). This
    builds `AlignSeg.from_preset(preset)` and loads such a file into its
    backbone (`load_backbone_weights`); the decoder keeps its fresh
    initialisation, as in the authors' training.

    Args:
        source: a `.pth` / `.npz` path or a dict, as for `read_state_dict`.
        num_classes: int, classes of the new model (19, Cityscapes).
        preset: an official preset, or None to tell the depth from `layer3`.
        verbose: bool, print the `ConversionReport`.
        **model_kwargs: `AlignSeg` arguments overriding the preset.

    Example:
    ```python
    model = load_backbone_checkpoint("resnet101-imagenet.pth", num_classes=19)
    model.compile()
    ```
    """
    state_dict = read_state_dict(source)
    model = _official_model(preset, infer_depth(state_dict), num_classes, model_kwargs)
    report = load_backbone_weights(model, state_dict)
    if verbose:
        print(report)
    return model


def load_backbone_weights(model, source):
    """Loads an ImageNet checkpoint of the deep-stem ResNet into the model's backbone.

    Strict like `load_official_weights`: every backbone tensor must be present,
    finite and of the right shape, and nothing but `fc.weight`, `fc.bias` (the
    ImageNet classifier) and `num_batches_tracked` may be extra. The decoder's
    weights are left as they are.

    The file holds plain BatchNorm weights, but the authors' model reads them
    through InPlaceABN, which scales by `|weight| + eps`; this loader does the
    same (`gamma = |weight| + eps`), so that the Keras model starts exactly
    where the authors' training starts. (Read as plain BatchNorm, the two
    differ by eps and wherever a weight is negative.)

    Args:
        model: an `AlignSeg` with the authors' backbone (`resnet50_deepstem` or
            `resnet101_deepstem`).
        source: a checkpoint path or dict, as for `read_state_dict`.

    Returns:
        A `ConversionReport`.

    Example:
    ```python
    model = AlignSeg.from_preset("alignseg_resnet101_official", num_classes=19)
    print(load_backbone_weights(model, "resnet101-imagenet.pth"))
    ```
    """
    state_dict = read_state_dict(source)
    depth = _model_depth(model)
    weight_map = backbone_weight_map(depth)
    variables = _model_variables(model)
    _check_model_covered(weight_map, variables, OFFICIAL_PRESETS[depth], whole_model=False)
    modules = _backbone_modules(_stage_blocks(depth))
    optional = set(_batch_counters(modules)) | set(IMAGENET_CLASSIFIER)
    hint = ""
    if "head.3.weight" in state_dict:
        hint = (
            "\nThis is a whole AlignSeg checkpoint, not a backbone: load it with "
            "load_official_checkpoint (alignseg convert without --backbone-only)."
        )
    target = f"the backbone of {OFFICIAL_PRESETS[depth]}"
    return _assign_strictly(variables, state_dict, weight_map, optional, target, hint)


def _model_depth(model):
    architecture = encoder_architecture(model)
    depth = BACKBONE_DEPTHS.get(architecture)
    if depth is None:
        raise ValueError(
            "Only AlignSeg models with the authors' encoder (resnet50_deepstem or "
            "resnet101_deepstem) match their checkpoints; received encoder "
            f"{architecture!r}."
        )
    return depth


def encoder_architecture(model):
    """The ResNet architecture of an AlignSeg's image encoder, or None for other encoders."""
    return getattr(getattr(model, "image_encoder", None), "architecture", None)


def export_official_state_dict(model):
    """The weights of an official-configuration AlignSeg with the authors' names.

    The inverse of `load_official_checkpoint`: a dict of name -> NumPy array in
    PyTorch layout, in the order of the authors' `state_dict`, with every key
    of it (`num_batches_tracked` set to 0), so that
    `torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})`
    loads it strictly. Each normalisation `gamma` is written as the InPlaceABN
    weight `gamma - eps` (`gamma_to_abn_weight`): the authors' library computes
    `|weight| + eps` from it, the same `gamma`. A checkpoint's negative weights
    come back as their absolute values, which the library treats alike.

    Args:
        model: an `AlignSeg` built from an official preset (deep-stem backbone).

    Raises:
        ValueError: some `gamma` is below eps (or negative), which InPlaceABN
            cannot represent; the error lists the layers.

    Example:
    ```python
    state = export_official_state_dict(model)
    state["head.3.weight"].shape  # (19, 256, 1, 1)
    ```
    """
    depth = _model_depth(model)
    modules = official_module_map(depth)
    weight_map = _weight_map(modules)
    variables = _model_variables(model)
    _check_model_covered(weight_map, variables, OFFICIAL_PRESETS[depth])
    counters = set(_batch_counters(modules))
    state, unrepresentable = {}, []
    for module, _, params in modules:
        for torch_name, _ in params:
            name = f"{module}.{torch_name}"
            path = weight_map[name]
            value = keras_to_torch(name, keras.ops.convert_to_numpy(variables[path]))
            if _is_gamma(path):
                if below := int(np.sum(value < np.float32(INPLACE_ABN_EPSILON))):
                    unrepresentable.append(f"{path} ({module}): {below} of {value.size}")
                value = gamma_to_abn_weight(value)
            state[name] = value
        if f"{module}.{BATCH_COUNTER}" in counters:
            state[f"{module}.{BATCH_COUNTER}"] = np.array(0, dtype="int64")
    if unrepresentable:
        raise ValueError(
            f"InPlaceABN scales by |weight| + {INPLACE_ABN_EPSILON:g}, so it cannot represent "
            f"a BatchNormalization gamma below {INPLACE_ABN_EPSILON:g}; these layers have "
            "such values (count of the layer's channels):\n    " + "\n    ".join(unrepresentable)
        )
    return state
