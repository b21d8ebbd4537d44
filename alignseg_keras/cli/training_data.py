"""Which training data a run of `alignseg train` started on, kept in its output folder.

A re-run of the command resumes the run in its `--output-dir`. Another model there
is refused by its backup's configuration (`callbacks.BackupOfAnotherModelError`),
but another dataset with the same classes fits the same model: a new experiment
given the folder of an unfinished one (`runs/train`, the default, for both) would
have trained the old run's weights on the new data and replaced its backups. The
run's data are therefore recorded when it starts (`RECORD_NAME`) and compared when
it resumes.

The data are told by what they are, not where they lie, so a dataset moved or
copied elsewhere (a cluster node's local disk) resumes: Cityscapes and ADE20K by
their name; `--dataset files` by the paths of its image and label files below the
folder each list lies in, their sizes (other contents under the same names: frames of
another camera numbered alike) and its `--label-map`; the synthetic scenes by their
number and size.
"""

import hashlib
import json
import os

RECORD_NAME = "training_data.json"


class OtherTrainingDataError(ValueError):
    """A run is resumed on other training data than it started on."""

    def __init__(self, output_dir, difference):
        super().__init__(
            f"The run in {output_dir} started on other training data ({difference}): its "
            f"backups would go on training on these. Give that run's data to resume it, "
            f"another --output-dir to train on these (or remove {os.path.join(output_dir, 'backup')} "
            "to start over there), or --resume-with-other-data to resume it on these."
        )


def describe(args, file_pairs):
    """What the command's training data are: a dict of JSON values.

    Args:
        args: the parsed arguments of `alignseg train`.
        file_pairs: for `--dataset files`, the `(images, masks)` path lists as
            training reads them; ignored otherwise.
    """
    if args.dataset == "files":
        images, masks = file_pairs
        names = [f"{image} {mask}" for image, mask in zip(_below_common_folder(images),
                                                            _below_common_folder(masks))]
        sizes = [f"{_size(image)} {_size(mask)}" for image, mask in zip(images, masks)]
        record = {"dataset": "files", "pairs": len(names), "first": names[0], "last": names[-1],
                  "names_sha256": _digest(names),
                  "sha256": _digest(f"{name} {size}" for name, size in zip(names, sizes))}
        if getattr(args, "label_map", None) is not None:
            record["label_map"] = _label_map_text(args.label_map)
        return record
    if args.dataset == "synthetic":
        return {"dataset": "synthetic", "images": args.synthetic_images,
                "size": list(args.synthetic_size)}
    return {"dataset": args.dataset}


def difference(recorded, current):
    """How `current` (of `describe`) differs from `recorded`, in words; "" when it does not."""
    if recorded == current:
        return ""
    if recorded.get("dataset") != current.get("dataset"):
        return f"--dataset {recorded.get('dataset')}, now {current.get('dataset')}"
    if current["dataset"] == "synthetic":
        return (f"{recorded.get('images')} synthetic scenes of {recorded.get('size')}, now "
                f"{current['images']} of {current['size']}")
    if current["dataset"] == "files" and _without_label_map(recorded) == _without_label_map(current):
        return (f"--label-map {recorded.get('label_map', 'none')}, now "
                f"{current.get('label_map', 'none')}")
    if current["dataset"] == "files" and recorded.get("names_sha256") == current["names_sha256"]:
        return (f"{_pairs(current)} of the same names in both, but files of other sizes: "
                "other contents")
    if current["dataset"] == "files":
        return (f"{_pairs(recorded)}, now {_pairs(current)}"
                + (" (other pairs in between)" if _pairs(recorded) == _pairs(current) else ""))
    return f"{recorded}, now {current}"


def _below_common_folder(paths):
    """The paths relative to the folder they all lie in (subfolders kept: `cam1/000001.png`
    and `cam2/000001.png` stay apart; a dataset moved elsewhere keeps them)."""
    folders = [os.path.dirname(os.path.abspath(path)) for path in paths]
    common = os.path.commonpath(folders) if folders else ""
    return [os.path.relpath(os.path.abspath(path), common) for path in paths]


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return -1  # read, and named, by the pipeline


def _digest(lines):
    """The SHA-256 of `lines`, names that are not UTF-8 (os.fsdecode's escapes) included."""
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _label_map_text(label_map):
    return ",".join(f"{stored}:{label}" for stored, label in sorted(label_map.items()))


def _without_label_map(record):
    return {key: value for key, value in record.items() if key != "label_map"}


def _pairs(record):
    return (f"{record.get('pairs')} image/label pairs from {record.get('first')!r} "
            f"to {record.get('last')!r}")


def read(output_dir):
    """The data recorded in `output_dir`, or None (a run recorded by no version of this module,
    or a record that cannot be read: nothing to compare with)."""
    try:
        with open(os.path.join(output_dir, RECORD_NAME), encoding="utf-8") as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write(output_dir, record):
    """Records `record` (of `describe`) in `output_dir`, atomically."""
    from alignseg_keras.atomic import atomic_path

    with atomic_path(os.path.join(output_dir, RECORD_NAME)) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(record, file, indent=1)


def check_and_record(output_dir, current, resumed, allow_other=False):
    """Refuses to resume a run on other data; records the data a run goes on with.

    Args:
        output_dir: the run's output folder.
        current: the command's data, of `describe`.
        resumed: whether the run resumes from a backup (a run that starts over
            records its data, whatever was recorded before).
        allow_other: resume on other data (`--resume-with-other-data`), saying so.

    Raises:
        OtherTrainingDataError: resumed on other data than recorded, without `allow_other`.
    """
    recorded = read(output_dir) if resumed else None
    changed = difference(recorded, current) if recorded is not None else ""
    if changed and not allow_other:
        raise OtherTrainingDataError(output_dir, changed)
    if changed:
        print(f"Resuming on other training data than the run started on ({changed}), "
              "as --resume-with-other-data asks.", flush=True)
    if resumed and recorded is None:  # deleted, unreadable, or a run of an older version
        print(f"No record of this run's training data in {os.path.join(output_dir, RECORD_NAME)} "
              "(deleted, unreadable, or written by no version that records it): the data "
              "could not be checked against the run's; it is recorded now.", flush=True)
    if changed or recorded is None:
        write(output_dir, current)
