"""Preset directories in keras-hub's layout: configs, weights and metadata.

A preset directory holds:

    config.json         the backbone (`AlignSegBackbone`, its encoder included)
    model.weights.h5    the backbone's weights
    task.json           the segmenter (`AlignSeg`), its backbone and image converter
    task.weights.h5     the segmenter's own weights (heads), without the backbone's
    metadata.json       versions, parameter count, date, and the preset's description

This is the layout of keras-hub's `save_to_preset` (the same file names; the
JSON files hold Keras' serialized objects as theirs do, but keep the build and
compile configs, and metadata.json names this library's version rather than
keras-hub's), so a preset directory can be copied, versioned or uploaded like
theirs. keras-hub's own loaders do not load it (AlignSeg is not a keras-hub
class); `AlignSeg.from_preset` does, and takes keras-hub's backbone presets as
encoders (`AlignSeg(num_classes, backbone=directory)`). A directory is written to a temporary folder beside it and renamed into
place (`atomic_folder`), so a crash never leaves half a preset.
"""

import contextlib
import datetime
import json
import os

import keras

from alignseg_keras.atomic import atomic_folder
from alignseg_keras.atomic import check_replaceable_folder
from alignseg_keras.version import __version__

CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, MODEL_WEIGHTS_FILE, TASK_CONFIG_FILE, TASK_WEIGHTS_FILE, METADATA_FILE)
# What every preset this module writes holds: a folder without them is not one to replace
# (a folder holding only a user's config.json is refused, as is a keras-hub backbone's).
PRESET_REQUIRED = (CONFIG_FILE, TASK_CONFIG_FILE, METADATA_FILE)
# A backbone's preset alone (`AlignSegBackbone.save_to_preset`), as keras-hub's backbones write.
BACKBONE_PRESET_FILES = (CONFIG_FILE, MODEL_WEIGHTS_FILE, METADATA_FILE)
BACKBONE_PRESET_REQUIRED = (CONFIG_FILE, METADATA_FILE)


def is_preset_directory(preset):
    """Whether `preset` is a path to a directory holding a preset's `config.json`."""
    return isinstance(preset, (str, os.PathLike)) and os.path.isfile(
        os.path.join(os.fspath(preset), CONFIG_FILE)
    )


def check_preset_directory(directory):
    """Raises the `ValueError` `save_task_preset` would raise for `directory`, at once:
    a folder of other files, or a preset of another task (keras-hub's use the same names)."""
    check_replaceable_folder(directory, PRESET_FILES, PRESET_REQUIRED)
    _check_saved_class(directory, TASK_CONFIG_FILE, "AlignSeg")


def _check_saved_class(directory, name, class_name):
    """Raises a `ValueError` where `directory` holds a JSON file `name` of a class other
    than `class_name` (keras-hub's presets use the same file names)."""
    if os.path.isfile(os.path.join(os.fspath(directory), name)):
        saved = _read_json(directory, name).get("class_name")
        if saved != class_name:
            raise ValueError(
                f"{os.fspath(directory)} holds a preset of a {saved} (its {name}), which "
                "replacing it would delete; give a new or empty folder, or remove it first."
            )


# Extensions of single-file models: a preset directory named so is a mistake.
MODEL_FILE_EXTENSIONS = (".keras", ".h5", ".hdf5", ".pth", ".pt", ".npz", ".pb", ".onnx",
                         ".tflite", ".json")


def check_preset_directory_name(directory, what="the preset directory", hint=""):
    """Raises a `ValueError` when `directory` ends with a model file's extension."""
    name = os.path.basename(os.fspath(directory).rstrip("/\\"))
    extension = os.path.splitext(name)[1]
    if extension.lower() in MODEL_FILE_EXTENSIONS:
        raise ValueError(
            f"{what} {os.fspath(directory)!r} ends with {extension}, a model file's extension; "
            f"a preset is a folder: give a name without it{hint}."
        )
    return directory


def warn_if_registered_name(directory):
    """Warns when the preset directory's name is a registered preset's: `from_preset`
    of that name would load the directory where it is found (run in its parent folder)
    and the registered architecture elsewhere."""
    import warnings

    from alignseg_keras.models.presets import PRESETS

    name = os.path.basename(os.path.abspath(os.fspath(directory)))
    if name in PRESETS:
        warnings.warn(
            f"The preset directory {os.fspath(directory)!r} has the name of the registered "
            f"preset {name!r}: from_preset({name!r}) loads this directory when run in its "
            "parent folder, and the registered architecture without weights elsewhere. "
            "Another name avoids the ambiguity.", stacklevel=3)


def save_task_preset(task, directory, description=None):
    """Writes `task` (an `AlignSeg`) and its backbone to a preset directory.

    Args:
        task: a built `AlignSeg`.
        directory: the preset directory. An earlier preset there is replaced;
            a directory holding other files is refused with a `ValueError`.
        description: str or None, a line for `metadata.json`.
    """
    check_preset_directory_name(directory)
    check_preset_directory(directory)
    warn_if_registered_name(directory)
    with atomic_folder(directory, PRESET_FILES, PRESET_REQUIRED) as temporary:
        backbone = task.backbone
        _write_json(temporary / CONFIG_FILE, keras.saving.serialize_keras_object(backbone))
        backbone.save_weights(temporary / MODEL_WEIGHTS_FILE)
        _write_json(temporary / TASK_CONFIG_FILE, keras.saving.serialize_keras_object(task))
        keras.saving.save_weights(
            task,
            temporary / TASK_WEIGHTS_FILE,
            objects_to_skip=list(backbone._flatten_layers()),
        )
        _write_json(temporary / METADATA_FILE, _metadata(task, description))


def save_backbone_preset(backbone, directory, description=None):
    """Writes an `AlignSegBackbone` alone to a preset directory, as keras-hub's
    `Backbone.save_to_preset` does: `config.json`, `model.weights.h5`, `metadata.json`.

    Args:
        backbone: a built `AlignSegBackbone`.
        directory: the preset directory. An earlier backbone preset of an
            `AlignSegBackbone` there is replaced; a directory holding other files
            (a whole AlignSeg's preset, with its heads, among them) or another
            model's `config.json` is refused with a `ValueError`.
        description: str or None, a line for `metadata.json`.
    """
    check_preset_directory_name(directory)
    check_replaceable_folder(directory, BACKBONE_PRESET_FILES, BACKBONE_PRESET_REQUIRED)
    _check_saved_class(directory, CONFIG_FILE, "AlignSegBackbone")
    with atomic_folder(directory, BACKBONE_PRESET_FILES, BACKBONE_PRESET_REQUIRED) as temporary:
        _write_json(temporary / CONFIG_FILE, keras.saving.serialize_keras_object(backbone))
        backbone.save_weights(temporary / MODEL_WEIGHTS_FILE)
        _write_json(temporary / METADATA_FILE, _metadata(backbone, description))


def is_backbone_only_preset(preset):
    """Whether `preset` is a directory of an `AlignSegBackbone` alone, without a
    segmenter's files (a whole AlignSeg's that lost its `task.json` is not)."""
    return is_alignseg_backbone_preset(preset) and not any(
        os.path.exists(os.path.join(os.fspath(preset), name))
        for name in (TASK_CONFIG_FILE, TASK_WEIGHTS_FILE))


def load_task_config(directory):
    """The serialized segmenter of a preset directory (`task.json`), or a `ValueError`
    saying what the directory holds instead (a keras-hub backbone, another task)."""
    directory_path = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory_path, TASK_CONFIG_FILE)) and os.path.isfile(
            os.path.join(directory_path, CONFIG_FILE)):
        backbone = _read_json(directory, CONFIG_FILE).get("class_name")
        if backbone != "AlignSegBackbone":
            raise ValueError(
                f"{directory_path!r} is a preset of a {backbone} (its config.json), "
                "not of an AlignSeg: give it as AlignSeg's encoder, "
                f"AlignSeg(num_classes, backbone={directory_path!r})."
            )
    task = _read_json(directory, TASK_CONFIG_FILE)
    if task.get("class_name") != "AlignSeg":
        raise ValueError(
            f"{directory_path!r} is a preset of a {task.get('class_name')} (its "
            f"{TASK_CONFIG_FILE}), not of an AlignSeg."
        )
    return task


def is_alignseg_backbone_preset(preset):
    """Whether `preset` is a preset directory whose `config.json` is an `AlignSegBackbone`."""
    return is_preset_directory(preset) and (
        _read_json(preset, CONFIG_FILE).get("class_name") == "AlignSegBackbone")


def task_input_convention(directory):
    """The mean, std and channel order of the image converter a preset directory's
    segmenter normalises with (its `task.json`); {} for a backbone's preset alone,
    which has no image converter (its encoder's convention applies)."""
    if is_backbone_only_preset(directory):
        return {}
    converter = load_task_config(directory)["config"]["image_converter"]["config"]
    return {key: converter[key] for key in ("mean", "std", "bgr")}


def load_backbone(directory, load_weights=True):
    """The `AlignSegBackbone` of a preset directory, with its weights by default."""
    config = _read_json(directory, CONFIG_FILE)
    if config.get("class_name") != "AlignSegBackbone":
        raise ValueError(
            f"{os.fspath(directory)!r} is a preset of a {config.get('class_name')} (its "
            f"{CONFIG_FILE}), not of an AlignSegBackbone."
        )
    backbone = keras.saving.deserialize_keras_object(config)
    if load_weights:
        path = _existing(directory, MODEL_WEIGHTS_FILE)
        with _weights_file_errors(path):
            backbone.load_weights(path)
    return backbone


def load_task_weights(task, directory):
    """Loads the segmenter's own weights (`task.weights.h5`) into `task`."""
    path = _existing(directory, TASK_WEIGHTS_FILE)
    with _weights_file_errors(path):
        keras.saving.load_weights(
            task, path, objects_to_skip=list(task.backbone._flatten_layers())
        )


@contextlib.contextmanager
def _weights_file_errors(path):
    """h5py's error for a truncated or foreign file, as a ValueError naming `path`."""
    try:
        yield
    except (PermissionError, FileNotFoundError):
        raise  # the file system's own error says it
    except OSError as error:
        raise ValueError(
            f"{path} cannot be read as a Keras weights file ({error}); the preset is "
            "damaged or incomplete (an interrupted copy or download?): write or copy it again."
        ) from error


def saved_head_count(filepath):
    """The number of `SegmentationHead`s an AlignSeg's `.weights.h5`, sharded
    `.weights.json` or `.keras` file holds (2 with deep supervision), or None where it
    cannot be told (another layout or model)."""
    import re
    import zipfile

    from alignseg_keras.config_utils import keras_file_config

    path = os.fspath(filepath)
    head = r"segmentation_head(_[0-9]+)?"  # Keras' name of each head's group
    try:
        if path.endswith(".weights.json"):  # sharded: its map names every variable's layer
            with open(path, encoding="utf-8") as file:
                names = json.load(file).get("weight_map", {})
            return len({match.group(1) for name in names if (
                match := re.match(rf"/?layers/({head})/", name)) is not None}) or None
        if path.endswith(".keras"):
            config = keras_file_config(path)
            if config.get("class_name") != "AlignSeg":
                return None
            return 1 + bool(config.get("config", {}).get("deep_supervision", True))
        if path.endswith(".weights.h5"):
            import h5py

            with h5py.File(path, "r") as file:
                layers = file.get("layers")
                if layers is None:
                    return None
                count = sum(re.fullmatch(head, name) is not None for name in layers)
            return count or None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # Keras' own loading names the damaged file
    return None


def load_metadata(directory):
    """The preset's `metadata.json` as a dict."""
    return _read_json(directory, METADATA_FILE)


def _metadata(model, description):
    return {
        "keras_version": keras.version(),
        "alignseg_keras_version": __version__,
        "parameter_count": int(model.count_params()),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "description": description or "",
    }


def _existing(directory, name):
    path = os.path.join(os.fspath(directory), name)
    if not os.path.isfile(path):
        raise ValueError(
            f"The preset directory {os.fspath(directory)!r} has no {name}; a preset written by "
            "`save_to_preset` holds config.json, model.weights.h5, task.json, task.weights.h5 "
            "and metadata.json."
        )
    return path


def _read_json(directory, name):
    path = _existing(directory, name)
    try:
        with open(path) as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _write_json(path, value):
    with open(path, "w") as file:
        json.dump(value, file, indent=4)
