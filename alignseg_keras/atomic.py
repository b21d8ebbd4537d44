"""Atomic file writes: a temporary file in the destination's folder, then `os.replace`.

Every file that `alignseg` writes and a user may lose (checkpoints, backups, the
final model, pictures, exported models) goes through `atomic_path`, and every
folder written as a whole (a SavedModel) through `atomic_folder`: a reader, a
second process writing the same file, or a re-run after a kill or a full disk
sees the old file or the new one, never a torn one. A folder that cannot be
renamed (a mount point) is written in place: staged inside it, then moved
entry by entry, which a failure does not tear but a reader may see mid-move.
"""

import contextlib
import errno
import os
import pathlib
import re
import secrets
import shutil
import warnings

TEMP_PREFIX = ".tmp-"
# The names `_temporary_name` gives (every version): the prefix, a process id, a dash,
# 8 hex digits, a dash.
_TEMPORARY_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9]+-[0-9a-f]{8}-")


def _is_temporary(name):
    """Whether `name` is one of this module's temporaries (a user's `.tmp-notes` is not)."""
    return _TEMPORARY_NAME.match(name) is not None


def _replaced_entry(name):
    """The entry an in-place writer renamed aside to the temporary `name`, or None."""
    tail = name.split("-", 3)[-1]
    if _is_temporary(name) and tail.startswith("replaced-"):
        return tail[len("replaced-"):]
    return None


@contextlib.contextmanager
def atomic_path(path, remove_abandoned=False):
    """Yields a temporary path next to `path`; on success it replaces `path` in one step.

    The temporary file is in the same folder (so `os.replace` is atomic) and its
    name ends with the name of `path` (so savers that check the extension, such
    as `model.save(...)` for ".keras" or `save_weights` for ".weights.h5",
    accept it). When the block ends without an error the file is flushed to
    disk and renamed over `path`; when it raises, the temporary file is removed
    and `path` is left as it was.

    Args:
        path: the file to write.
        remove_abandoned: for files many processes may write in a shared folder
            (exports): first remove the temporaries of `path` that killed writers
            left (`_remove_abandoned`), and hold a lock on this writer's own
            temporary while the block writes it (which tells a running writer's
            from a killed one's). The temporary is created empty before the block,
            so the block must write it in place (savers that open it for writing do).

    Example:
    ```python
    with atomic_path("runs/a/model.keras") as temporary:
        model.save(temporary)
    ```
    """
    path = pathlib.Path(path)
    lock = None
    if remove_abandoned:
        _remove_abandoned(path.parent, path.name, kind="file")
    temporary = _temporary_name(path)
    try:
        if remove_abandoned:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            lock = _locked_folder(temporary)
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_folder(path, replaceable_entries, required_entries):
    """Yields a new, empty folder next to `path` (inside it where it is written in
    place); on success it takes the place of `path`.

    For folders written as a whole, such as a SavedModel: a reader (TF Serving
    watching its model folder loads each new version folder as soon as it
    appears) finds no folder, the old one or the complete new one. `path` must
    not exist, be empty, or be an earlier folder of the same kind, which is
    then replaced and removed: one that holds all of `required_entries` and
    nothing but `replaceable_entries`; anything else (a folder of a user's
    own files named `assets` or `variables` too), a symbolic link, or the
    current folder or one above it is a `ValueError` before anything is written, and files added to `path` while the new folder
    is written are a `ValueError` too, so no other files are deleted. When the
    block raises, the temporary folder is removed and `path` is left as it was;
    one that a killed writer left is removed by the next writer of `path`.
    The rename of a new `path` is atomic; replacing an existing one takes two
    renames, between which `path` is briefly absent (a process killed there
    leaves the old folder as `.tmp-...-replaced-<name>`). Processes replacing
    the same folder take turns (a lock on its parent folder, on POSIX systems). A
    mount point, or a folder whose parent cannot be written, cannot be renamed:
    it is written in place, with a warning (see `_write_in_place`).

    Args:
        path: the folder to write.
        replaceable_entries: names of the files and folders an existing `path`
            may hold and still be replaced.
        required_entries: names an existing `path` must all hold to be
            replaced (those that say it is a folder of this kind).

    Example:
    ```python
    with atomic_folder("models/alignseg/1", {"saved_model.pb", "variables"},
                       {"saved_model.pb"}) as temporary:
        tf.saved_model.save(module, str(temporary))
    ```
    """
    check_replaceable_folder(path, replaceable_entries, required_entries)
    shown, path = path, pathlib.Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = _in_place_reason(path)
    if reason:
        warnings.warn(f"{shown} is written in place, not atomically: {reason}. The new files "
                      "are written in a hidden folder inside it and moved into place when "
                      "complete; a reader may see old and new files during the moves.",
                      stacklevel=3)
        with _write_in_place(shown, path, replaceable_entries, required_entries) as staging:
            yield staging
        return
    _remove_abandoned(path.parent, path.name)
    temporary = _temporary_name(path)
    with _new_folder_removed_on_failure(temporary):
        yield temporary
        _fsync_tree(temporary)
        with _folder_lock(path):
            # What was added meanwhile:
            check_replaceable_folder(shown, replaceable_entries, required_entries)
            _replace_folder(temporary, path)
    _fsync(path.parent)


@contextlib.contextmanager
def _new_folder_removed_on_failure(folder):
    """Creates `folder` for the block; removes it with its contents if the block raises.

    The block holds a lock on the folder: the kernel releases it when the
    process dies, which is how `_remove_abandoned` tells a killed writer's
    unfinished folder from a running writer's.
    """
    lock = None
    try:
        folder.mkdir()
        lock = _locked_folder(folder)
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


# An unlocked temporary is only removed once unchanged this long (it may have just been
# made, its writer not yet holding it).
ABANDONED_AFTER_SECONDS = 60


def _locked_folder(folder, blocking=True):
    """Opens and `flock`s the folder (or file); its descriptor, or None where it cannot
    be locked (not POSIX, a file system without locks, or held by another process when
    not `blocking`)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _remove_abandoned(folder, name, kind="folder"):
    """Removes from `folder` the unfinished temporary folders (or files, `kind="file"`)
    that writers of `name` killed before the end left there: those no process holds,
    unchanged for `ABANDONED_AFTER_SECONDS`. Folders set aside by a replace
    (`_replaced_entry`) are kept: they hold the last complete version."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if (not _is_temporary(entry) or entry.split("-", 3)[-1] != name
                or _replaced_entry(entry) is not None):  # a folder named "replaced-X" too
            continue
        temporary = os.path.join(folder, entry)
        if _removed_if_abandoned(temporary, kind):
            warnings.warn(f"Removed {temporary}: an unfinished {name} that a killed writer "
                          "left.", stacklevel=4)


def _removed_if_abandoned(path, kind="folder"):
    """Removes the folder (or file, `kind="file"`) `path` if no process holds it and it
    is unchanged for `ABANDONED_AFTER_SECONDS`; whether it did."""
    import time

    try:
        if time.time() - os.lstat(path).st_mtime < ABANDONED_AFTER_SECONDS:
            return False
    except OSError:
        return False
    is_kind = os.path.isdir if kind == "folder" else os.path.isfile
    if os.path.islink(path) or not is_kind(path):
        return False
    lock = _locked_folder(path, blocking=False)
    if lock is None:  # a running writer's, or where nothing locks
        return False
    try:
        if kind == "folder":
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
    finally:
        os.close(lock)
    return not os.path.lexists(path)


def held_scratch_folder(prefix):
    """A new folder `prefix...` in the system's temporary folder, held (`flock`) while
    this process lives; first removes the folders of `prefix` that killed processes
    left: those no process holds, unchanged for `ABANDONED_AFTER_SECONDS`.

    For scratch copies a process writes and deletes (`multiprocess.scratch_folder`):
    removed at exit, they stayed after a SIGKILL, an out-of-memory kill or a
    preemption, a whole model each. Folders of other users (unreadable) and of
    running processes (held) are left alone.
    """
    import atexit
    import tempfile

    parent = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.listdir(parent):
            if entry.startswith(prefix) and _removed_if_abandoned(os.path.join(parent, entry)):
                warnings.warn(f"Removed {os.path.join(parent, entry)}: the scratch folder of a "
                              "killed process.", stacklevel=3)
    folder = tempfile.mkdtemp(prefix=prefix)
    lock = _locked_folder(folder)
    atexit.register(shutil.rmtree, folder, True)
    if lock is not None:  # released, with the descriptor, when the process ends
        _HELD_FOLDERS.append(lock)
    return folder


# The descriptors that hold `held_scratch_folder`'s folders for this process's life.
_HELD_FOLDERS = []


def _fsync_tree(folder):
    for written in [folder, *folder.rglob("*")]:
        _fsync(written)


@contextlib.contextmanager
def _write_in_place(shown, path, replaceable_entries, required_entries):
    """Yields a hidden folder inside `path`; on success its entries replace those of `path`.

    For a folder that cannot be renamed (a mount point, an unwritable parent):
    a failure while writing (the long part, where a full disk strikes) leaves
    the old entries as they were and removes the hidden folder. Only the moves
    at the end, one rename per entry (folders first), are not atomic as a
    whole; one that fails puts the old entries back. Hidden temporaries inside
    `path` (other writers', or a killed one's) are not counted as foreign files;
    old entries a killed writer left mid-move are removed under the lock.
    """
    path.mkdir(exist_ok=True)
    _remove_abandoned(path, path.name)
    staging = _temporary_name(path / path.name)
    with _new_folder_removed_on_failure(staging):
        yield staging
        _fsync_tree(staging)
        with _folder_lock(path):
            temporaries = {name for name in os.listdir(path) if _is_temporary(name)}
            check_replaceable_folder(shown, replaceable_entries, required_entries)
            new_entries = set(os.listdir(staging))
            _move_entries(staging, path)
            for stale in set(os.listdir(path)) & set(replaceable_entries) - new_entries:
                _remove(path / stale)
            for name in temporaries:
                if _replaced_entry(name) is not None:
                    _remove(path / name)
        os.rmdir(staging)  # emptied by the moves
    _fsync(path)


def _move_entries(source, path):
    """Replaces the entries of folder `path` that `source` has by those of `source`
    (folders first, so that a SavedModel's graph file comes last); if a move fails,
    the entries moved so far are put back."""
    entries = sorted(os.listdir(source), key=lambda name: (not (source / name).is_dir(), name))
    moved = []
    try:
        for entry in entries:
            target = path / entry
            old = _temporary_name(target, tag="replaced-")
            if os.path.lexists(target):
                os.rename(target, old)
            moved.append((entry, old))
            os.rename(source / entry, target)
    except BaseException:
        for entry, old in reversed(moved):
            with contextlib.suppress(OSError):
                if os.path.lexists(path / entry) and not os.path.lexists(source / entry):
                    os.rename(path / entry, source / entry)
                if os.path.lexists(old):
                    os.rename(old, path / entry)
        raise
    for _, old in moved:
        _remove(old)


def _remove(path):
    """Removes the file or folder `path`, if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def check_replaceable_folder(path, replaceable_entries, required_entries):
    """Raises the `ValueError` of `atomic_folder` when it would refuse `path` (this
    module's hidden temporaries are not counted as files of the folder)."""
    shown, path = path, pathlib.Path(os.path.abspath(path))
    # "link/" names the folder a link points to, which islink does not see as a link.
    if os.path.islink(str(shown).rstrip("/" + os.sep) or str(shown)):
        raise ValueError(f"{shown} is a symbolic link; give the folder it points to "
                         f"({os.path.realpath(shown)}) or a new name.")
    current = pathlib.Path.cwd()
    if path == current or path in current.parents:
        raise ValueError(f"{shown} is the current folder or holds it, which cannot be replaced; "
                         "give a folder inside it (for TF Serving a version folder such as "
                         f"{os.path.join(shown, '1')}).")
    try:  # one look at the folder: another process may be renaming it
        entries = os.listdir(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        file = next((p for p in [path, *path.parents] if os.path.exists(p) and not os.path.isdir(p)),
                    path)
        what = f"{shown} is a file" if file == path else f"{shown} is inside the file {file}"
        raise ValueError(f"{what}, not a folder; give a folder (created if needed).") from None
    # An entry an in-place writer killed mid-move left renamed aside counts as there.
    aside = {_replaced_entry(name) for name in entries} - {None}
    entries = sorted(name for name in entries if not _is_temporary(name))  # `_write_in_place`'s
    foreign = [name for name in entries if name not in replaceable_entries]
    if foreign:
        raise ValueError(
            f"{shown} holds files that replacing it would delete ({_listed(foreign)}); give a "
            "new or empty folder, or remove them first."
        )
    missing = sorted(set(required_entries) - set(entries) - aside)
    if entries and missing:
        raise ValueError(
            f"{shown} holds {_listed(entries)} but no {', '.join(missing)}, so it is not an "
            "earlier folder of this kind and replacing it would delete them; give a new or "
            "empty folder, or remove them first."
        )


def _listed(names):
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_writable(path):
    """Raises a `ValueError` when the file or folder `path` cannot be written.

    `path` and missing folders above it are to be created: the nearest folder
    that exists must be writable. An existing file is replaced beside it (its
    folder must be writable); an existing folder either so or in place.
    """
    shown, path = path, pathlib.Path(os.path.abspath(path))
    existing = next(p for p in [path, *path.parents] if os.path.lexists(p))
    if existing != path and not existing.is_dir():
        raise ValueError(f"{shown} is inside {existing}, which is not a folder; give a "
                         "path in a folder.")
    if existing != path:
        folder = existing
    elif path.is_dir() and _in_place_reason(path):
        folder = path  # written in place
    else:
        folder = path.parent  # written beside, then renamed
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{shown} cannot be written: the folder {folder} is not writable.")


def _in_place_reason(path):
    """Why the folder `path` cannot be written beside and renamed, or None."""
    if os.path.ismount(path):
        return "it is a mount point, which cannot be renamed"
    if not os.access(path.parent, os.W_OK):
        return f"its folder {path.parent} is not writable"
    return None


def _temporary_name(path, tag=""):
    """A free hidden name beside `path` that ends with the name of `path`."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{tag}{path.name}")


@contextlib.contextmanager
def _folder_lock(path):
    """Holds an exclusive lock on the folder that holds `path` (POSIX, where the file
    system locks; nothing elsewhere)."""
    descriptor = _locked_folder(path.parent)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _replace_folder(new, path):
    """Renames the folder `new` to `path`, removing the folder `path` was."""
    if not path.exists():
        os.rename(new, path)
        return
    old = _temporary_name(path, tag="replaced-")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path):
    """Flushes a file or folder to disk (where the platform allows it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


WRITER_LOCK = ".writer.lock"


@contextlib.contextmanager
def single_writer(folder, writer, remove_if_unused=False):
    """Holds `folder` for this process alone while the block runs.

    An exclusive `flock` on `folder/.writer.lock`, holding the process id. A
    second process (or a second claim in this one) is refused at once with a
    `ValueError` naming `folder` and the process that holds it; the kernel
    releases the lock when the block ends or the process dies, even by a
    kill. Without `fcntl` (not POSIX) nothing is locked.

    Args:
        folder: an existing folder.
        writer: what writes there, for the message (e.g. "alignseg train").
        remove_if_unused: when the block ends and the folder holds nothing but
            the lock file (a run that failed before writing anything), the lock
            file and the folder are removed, while still held.

    Example:
    ```python
    with single_writer("runs/a", "alignseg train"):
        ...  # remove_temporaries("runs/a") is now safe
    ```
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = os.path.join(folder, WRITER_LOCK)
    descriptor = _locked_writer_file(path, folder, writer, fcntl)
    if descriptor is None:  # a file system without flock (NFS without its lock service)
        yield
        return
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        if remove_if_unused:
            _remove_unused_folder(folder)
        os.close(descriptor)  # releases the lock


def _locked_writer_file(path, folder, writer, fcntl):
    """Opens and locks the lock file `path`; its descriptor, or None where nothing locks.

    A holder that removes an unused folder unlinks the lock file while holding
    it: a process that opened the file before is then granted a lock on a
    file no longer in the folder, so the lock is taken again on the file the
    path names now.
    """
    for _ in range(100):
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise ValueError(
                f"{folder} was removed while {writer} started (another {writer} that failed "
                "before writing anything removed it): run again."
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise ValueError(
                f"{folder} is in use by another {writer} (process {holder}): two writers "
                "would overwrite each other's files. Wait for it to end, or use another "
                "folder."
            ) from None
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            warnings.warn(
                f"{folder} cannot be locked ({error.strerror}): make sure no other {writer} "
                "writes there.", stacklevel=4
            )
            return None
        if _names_the_same_file(path, descriptor):
            return descriptor
        os.close(descriptor)  # unlinked by the holder that ended: lock the new file
    raise ValueError(f"{folder} could not be locked: its lock file keeps being replaced.")


def _names_the_same_file(path, descriptor):
    try:
        return os.path.samestat(os.stat(path), os.fstat(descriptor))
    except FileNotFoundError:
        return False


def _remove_unused_folder(folder):
    """Removes `folder` if it holds only the writer's lock file (called by the holder)."""
    try:
        if os.listdir(folder) != [WRITER_LOCK]:
            return
        os.unlink(os.path.join(folder, WRITER_LOCK))
        os.rmdir(folder)
    except OSError:  # another process wrote a file there meanwhile: it stays
        pass


def remove_temporaries(folder):
    """Removes the temporary files a killed writer left in `folder`.

    Only for folders with a single writer (a training run's output folder,
    held with `single_writer`): in a shared folder the temporaries may belong
    to a running process.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        if _is_temporary(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def is_disk_full(error):
    """Whether an exception (or one it was raised from) says the disk is full."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def move_aside(path, label):
    """Renames `path` to a free name with `label` and a time stamp; returns the new path.

    `runs/a/checkpoint.keras` becomes `runs/a/checkpoint.unusable-20250101-120000.keras`
    for the label "unusable". Used to keep a file that must not be used or
    overwritten, without deleting it.
    """
    import time

    path = pathlib.Path(path)
    stem, dot, extension = path.name.partition(".")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for count in range(1000):
        suffix = f"-{count}" if count else ""
        target = path.with_name(f"{stem}.{label}-{stamp}{suffix}{dot}{extension}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"No free name to move {path} aside.")
