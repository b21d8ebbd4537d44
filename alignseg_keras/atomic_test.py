"""atomic_folder: a folder written as a whole appears complete or not at all; single_writer."""

import os
import pathlib

import pytest

from alignseg_keras.atomic import TEMP_PREFIX
from alignseg_keras.atomic import atomic_folder
from alignseg_keras.atomic import atomic_path
from alignseg_keras.atomic import check_replaceable_folder
from alignseg_keras.atomic import held_scratch_folder
from alignseg_keras.atomic import single_writer

ENTRIES = ("model.pb", "variables")
REQUIRED = ("model.pb",)


def write_model(folder, text):
    (folder / "variables").mkdir()
    (folder / "variables" / "data").write_text(text)
    (folder / "model.pb").write_text(text)


def read_model(folder):
    return (folder / "model.pb").read_text(), (folder / "variables" / "data").read_text()


def test_a_new_folder_appears_only_when_complete(tmp_path):
    path = tmp_path / "models" / "1"
    with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
        write_model(temporary, "new")
        assert not path.exists()
        assert temporary.parent == path.parent and temporary.name.startswith(TEMP_PREFIX)
    assert read_model(path) == ("new", "new")
    assert [entry.name for entry in path.parent.iterdir()] == ["1"]


def test_an_earlier_folder_of_the_kind_is_replaced(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
        write_model(temporary, "new")
        assert read_model(path) == ("old", "old")
    assert read_model(path) == ("new", "new")
    assert [entry.name for entry in tmp_path.iterdir()] == ["1"]


def test_an_empty_folder_is_replaced(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
        write_model(temporary, "new")
    assert read_model(path) == ("new", "new")


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
            (temporary / "model.pb").write_text("half")
            raise OSError("disk full")
    assert read_model(path) == ("old", "old")
    assert [entry.name for entry in tmp_path.iterdir()] == ["1"]


def test_a_folder_with_other_files_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    (path / "assets.extra").mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"1 holds files that replacing it would delete "
                                         r"\(assets.extra, notes.txt\)"):
        with atomic_folder(path, ENTRIES, REQUIRED):
            raise AssertionError("never reached")
    assert read_model(path) == ("old", "old")
    assert (path / "notes.txt").read_text() == "mine"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["1"]


def test_a_folder_of_replaceable_names_without_the_required_ones_is_refused(tmp_path):
    # A user's folder that happens to hold only names an export writes (`variables`,
    # here with their own files) and names like this module's temporaries is no
    # earlier export: replacing it deleted them.
    path = tmp_path / "site"
    (path / "variables").mkdir(parents=True)
    (path / "variables" / "terraform.tfvars").write_text("mine")
    (path / f"{TEMP_PREFIX}draft-notes.md").write_text("mine too")
    with pytest.raises(ValueError, match=r"would delete \(\.tmp-draft-notes\.md\)"):
        with atomic_folder(path, ENTRIES, REQUIRED):
            raise AssertionError("never reached")
    assert (path / f"{TEMP_PREFIX}draft-notes.md").read_text() == "mine too"
    (path / f"{TEMP_PREFIX}draft-notes.md").unlink()
    with pytest.raises(ValueError, match=r"site holds variables but no model.pb, so it is not "
                                         r"an earlier folder of this kind"):
        with atomic_folder(path, ENTRIES, REQUIRED):
            raise AssertionError("never reached")
    assert (path / "variables" / "terraform.tfvars").read_text() == "mine"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["site"]
    # Only the temporaries of this module are left out (an empty folder is replaced).
    (path / "variables" / "terraform.tfvars").unlink()
    (path / "variables").rmdir()
    (path / f"{TEMP_PREFIX}12-0a1b2c3d-replaced-variables").mkdir()
    with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
        write_model(temporary, "new")
    assert read_model(path) == ("new", "new")


def test_only_this_modules_temporaries_are_removed(tmp_path):
    from alignseg_keras.atomic import remove_temporaries

    (tmp_path / f"{TEMP_PREFIX}123-0a1b2c3d-model.keras").write_text("left by a killed writer")
    (tmp_path / f"{TEMP_PREFIX}notes.md").write_text("a user's")
    (tmp_path / f"{TEMP_PREFIX}2024-12-notes.md").write_text("a user's, dated")
    remove_temporaries(tmp_path)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        f"{TEMP_PREFIX}2024-12-notes.md", f"{TEMP_PREFIX}notes.md"]


def test_a_file_is_refused(tmp_path):
    path = tmp_path / "1"
    path.write_text("a file")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_replaceable_folder(path, ENTRIES, REQUIRED)
    check_replaceable_folder(tmp_path / "absent", ENTRIES, REQUIRED)


def test_the_current_folder_and_symbolic_links_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (".", tmp_path, tmp_path.parent):
        with pytest.raises(ValueError, match="is the current folder or holds it"):
            check_replaceable_folder(path, ENTRIES, REQUIRED)
    (tmp_path / "7").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "7")
    with pytest.raises(ValueError, match=f"current is a symbolic link; give the folder it "
                                         f"points to \\({tmp_path / '7'}\\)"):
        with atomic_folder("current", ENTRIES, REQUIRED):
            raise AssertionError("never reached")
    for name in ("current/", f"{tmp_path / 'current'}//"):  # as a shell completes it
        with pytest.raises(ValueError, match="is a symbolic link"):
            check_replaceable_folder(name, ENTRIES, REQUIRED)
    with atomic_folder("1", ENTRIES, REQUIRED) as temporary:  # relative to the current folder
        write_model(temporary, "new")
    assert read_model(tmp_path / "1") == ("new", "new")


def test_files_added_while_the_folder_is_written_are_not_deleted(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    with pytest.raises(ValueError, match=r"holds files that replacing it would delete \(assets.extra\)"):
        with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
            write_model(temporary, "new")
            (path / "assets.extra").mkdir()  # added by hand during a long export
    assert read_model(path) == ("old", "old") and (path / "assets.extra").is_dir()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["1"]


def as_mount_point(monkeypatch, path):
    monkeypatch.setattr("os.path.ismount", lambda folder: str(folder) == str(path))


def test_a_mount_point_is_written_in_place_with_a_warning(tmp_path, monkeypatch):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    (path / "fingerprint.pb").write_text("old")  # the new export has none: removed
    as_mount_point(monkeypatch, path)
    with pytest.warns(UserWarning, match="written in place, not atomically: it is a mount point"):
        with atomic_folder(path, (*ENTRIES, "fingerprint.pb"), REQUIRED) as written:
            assert written.parent == path and written.name.startswith(TEMP_PREFIX)
            write_model(written, "new")
            assert read_model(path) == ("old", "old")
    assert read_model(path) == ("new", "new")
    assert sorted(entry.name for entry in path.iterdir()) == ["model.pb", "variables"]
    assert [entry.name for entry in tmp_path.iterdir()] == ["1"]


def test_a_failed_write_in_place_leaves_the_old_folder(tmp_path, monkeypatch):
    # A mount point's export that fails (a full disk) must not tear the version
    # TF Serving would load next.
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    as_mount_point(monkeypatch, path)
    with pytest.warns(UserWarning, match="written in place"), pytest.raises(OSError, match="full"):
        with atomic_folder(path, ENTRIES, REQUIRED) as written:
            (written / "model.pb").write_text("half")
            raise OSError("disk full")
    assert read_model(path) == ("old", "old")
    assert sorted(entry.name for entry in path.iterdir()) == ["model.pb", "variables"]


def test_files_added_in_place_while_writing_are_not_deleted(tmp_path, monkeypatch):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    as_mount_point(monkeypatch, path)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"delete \(assets.extra\)"):
        with atomic_folder(path, ENTRIES, REQUIRED) as written:
            write_model(written, "new")
            (path / "assets.extra").mkdir()
    assert read_model(path) == ("old", "old")
    assert sorted(entry.name for entry in path.iterdir()) == ["assets.extra", "model.pb", "variables"]


def test_in_place_temporaries_of_other_writers_do_not_block(tmp_path, monkeypatch):
    # A killed in-place writer's staging folder (or a running one's) is no foreign
    # file; old entries a writer killed mid-move left are removed.
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    (path / f"{TEMP_PREFIX}999-0000abcd-1").mkdir()
    (path / f"{TEMP_PREFIX}999-0000abcd-replaced-variables").mkdir()
    as_mount_point(monkeypatch, path)
    with pytest.warns(UserWarning, match="written in place"):
        with atomic_folder(path, ENTRIES, REQUIRED) as written:
            write_model(written, "new")
    assert read_model(path) == ("new", "new")
    assert sorted(entry.name for entry in path.iterdir()) == [
        f"{TEMP_PREFIX}999-0000abcd-1", "model.pb", "variables"]


def test_a_folder_a_killed_writer_left_mid_move_is_replaced(tmp_path):
    # Killed between the two renames of the graph file: it lies aside under its temporary name.
    path = tmp_path / "1"
    (path / "variables").mkdir(parents=True)
    (path / f"{TEMP_PREFIX}12-0a1b2c3d-replaced-model.pb").write_text("old")
    with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
        write_model(temporary, "new")
    assert read_model(path) == ("new", "new")
    assert sorted(entry.name for entry in path.iterdir()) == ["model.pb", "variables"]


def test_a_move_that_fails_in_place_puts_the_old_entries_back(tmp_path, monkeypatch):
    import os

    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    as_mount_point(monkeypatch, path)
    rename = os.rename
    calls = []

    def failing_rename(source, target):
        calls.append(target)
        if len(calls) == 4:  # variables aside and in, model.pb aside, then this
            raise OSError("the disk went away")
        rename(source, target)

    with pytest.warns(UserWarning), pytest.raises(OSError, match="went away"):
        with atomic_folder(path, ENTRIES, REQUIRED) as written:
            write_model(written, "new")
            monkeypatch.setattr(os, "rename", failing_rename)
    monkeypatch.setattr(os, "rename", rename)
    assert str(calls[0]).endswith("replaced-variables") and str(calls[3]).endswith("model.pb")
    assert read_model(path) == ("old", "old")
    assert sorted(entry.name for entry in path.iterdir()) == ["model.pb", "variables"]


def test_check_writable_follows_where_the_folder_is_written(tmp_path, monkeypatch):
    import os

    from alignseg_keras.atomic import check_writable

    mount = tmp_path / "mount"
    mount.mkdir()
    locked = {str(mount)}
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode)
                        and os.path.abspath(p) not in locked)  # root may write anywhere
    check_writable(mount)  # replaced beside it: its folder is writable
    as_mount_point(monkeypatch, mount)
    with pytest.raises(ValueError, match=f"the folder {mount} is not writable"):
        check_writable(mount)  # a mount point is written in place
    with pytest.raises(ValueError, match=f"the folder {mount} is not writable"):
        check_writable(mount / "new" / "deeper")  # created inside it
    locked.add(str(tmp_path))
    with pytest.raises(ValueError, match=f"the folder {tmp_path} is not writable"):
        check_writable(tmp_path / "a.tflite")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="a_file, which is not a folder"):
        check_writable(tmp_path / "a_file" / "1")


def test_a_folder_inside_a_file_names_the_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"1 is inside the file .*a_file, not a folder"):
        check_replaceable_folder(tmp_path / "a_file" / "1", ENTRIES, REQUIRED)


WRITER = """
import sys, time
from alignseg_keras.atomic import atomic_folder
from alignseg_keras.atomic import atomic_path
path, label = sys.argv[1], sys.argv[2]
for count in range(40):
    with atomic_folder(path, ("model.pb", "variables"), ("model.pb",)) as temporary:
        (temporary / "variables").mkdir()
        (temporary / "variables" / "data").write_text(f"{label}{count}")
        (temporary / "model.pb").write_text(f"{label}{count}")
"""


def test_processes_replacing_one_folder_take_turns(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "1"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), label],
                                stderr=subprocess.PIPE, text=True) for label in "abc"]
    errors = [writer.communicate()[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0, 0], errors
    model, variables = read_model(path)
    assert model == variables and model in ("a39", "b39", "c39")
    assert [entry.name for entry in tmp_path.iterdir()] == ["1"]


HOLDER = """
import sys, time
from alignseg_keras.atomic import single_writer
with single_writer(sys.argv[1], "test writer"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_is_refused_until_the_first_dies():
    import signal
    import subprocess
    import sys
    import tempfile

    folder = tempfile.mkdtemp()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, folder], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        message = rf"{folder} is in use by another alignseg train \(process {holder.pid}\)"
        with pytest.raises(ValueError, match=message):
            with single_writer(folder, "alignseg train"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases a killed holder's lock
        holder.wait()
    with single_writer(folder, "alignseg train"):
        with pytest.raises(ValueError, match=f"process {os.getpid()}"):  # a second claim here too
            with single_writer(folder, "alignseg train"):
                pass
    with single_writer(folder, "alignseg train"):  # released at the block's end
        pass


def test_a_folder_that_cannot_be_locked_is_written_with_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # NFS without its lock service
    ran = []
    with pytest.warns(UserWarning, match="cannot be locked .*No locks available"):
        with single_writer(str(tmp_path), "alignseg train"):
            ran.append(True)
    assert ran == [True]


def test_an_unused_folder_is_removed_by_its_writer_and_a_used_one_kept(tmp_path):
    unused, used = tmp_path / "unused", tmp_path / "used"
    unused.mkdir()
    used.mkdir()
    with single_writer(str(unused), "alignseg train", remove_if_unused=True):
        pass
    with pytest.raises(RuntimeError):
        with single_writer(str(used), "alignseg train", remove_if_unused=True):
            (used / "history.csv").write_text("epoch\n")
            raise RuntimeError("failed after writing")
    assert not unused.exists()
    assert sorted(path.name for path in used.iterdir()) == [".writer.lock", "history.csv"]


def test_a_lock_file_unlinked_by_its_holder_is_locked_again_as_it_is_now(tmp_path, monkeypatch):
    # A writer that removes its unused folder unlinks the lock file while holding it; a
    # process that opened the file before then got the lock of a file no longer there.
    import fcntl

    from alignseg_keras.atomic import WRITER_LOCK

    flock = fcntl.flock
    replaced = []

    def replaced_before_the_first_lock(descriptor, operation):
        if not replaced:
            (tmp_path / WRITER_LOCK).unlink()
            (tmp_path / WRITER_LOCK).write_text("")  # another writer's new lock file
            replaced.append(True)
        return flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", replaced_before_the_first_lock)
    with single_writer(str(tmp_path), "alignseg train"):
        assert (tmp_path / WRITER_LOCK).read_text() == str(os.getpid())
        with pytest.raises(ValueError, match="in use"):  # the file the path names is held
            with single_writer(str(tmp_path), "alignseg train"):
                pass


EXPORTER = """
import os, sys, time
from alignseg_keras.atomic import atomic_folder
from alignseg_keras.atomic import atomic_path
if sys.argv[2] == "mount point":
    os.path.ismount = lambda folder: str(folder) == sys.argv[1]
with atomic_folder(sys.argv[1], ("model.pb", "variables"), ("model.pb",)) as temporary:
    (temporary / "model.pb").write_text("half")
    print(temporary, flush=True)
    time.sleep(600)
"""


def start_writer(script, *arguments):
    """A process running `script`; returns it and the temporary path it prints."""
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", script, *arguments],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = writer.stdout.readline().strip()
    assert line, writer.communicate()
    return writer, pathlib.Path(line)


def age(path, seconds):
    import time

    os.utime(path, (time.time() - seconds,) * 2)


@pytest.mark.parametrize("in_place", [False, True])
def test_the_next_writer_removes_a_killed_writers_folder_not_a_running_ones(
        tmp_path, monkeypatch, in_place):
    # A killed export left its hidden folder (a SavedModel's size) until removed by hand.
    import signal

    from alignseg_keras.atomic import ABANDONED_AFTER_SECONDS

    path = tmp_path / "1"
    if in_place:
        path.mkdir()
        write_model(path, "old")
        as_mount_point(monkeypatch, path)

    arguments = (EXPORTER, str(path), "mount point" if in_place else "folder")
    killed, killed_folder = start_writer(*arguments)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    running, running_folder = start_writer(*arguments)
    try:
        fresh = killed_folder.with_name(f"{TEMP_PREFIX}99999999-0123abcd-1")
        fresh.mkdir()  # unheld but new: its writer may be about to lock it
        for folder in (killed_folder, running_folder):
            age(folder, ABANDONED_AFTER_SECONDS + 1)
        with pytest.warns(UserWarning) as warned:
            with atomic_folder(path, ENTRIES, REQUIRED) as temporary:
                write_model(temporary, "new")
        removed = [str(w.message) for w in warned if str(w.message).startswith("Removed")]
        assert removed == [f"Removed {killed_folder}: an unfinished 1 that a killed writer left."]
        assert read_model(path) == ("new", "new")
        assert not killed_folder.exists()
        assert running_folder.exists() and fresh.exists()
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()


FILE_EXPORTER = """
import sys, time
from alignseg_keras.atomic import atomic_path
with atomic_path(sys.argv[1], remove_abandoned=True) as temporary:
    with open(temporary, "wb") as file:  # as savers write: in place, truncated
        file.write(b"half")
    print(temporary, flush=True)
    time.sleep(600)
"""


def test_the_next_exporter_removes_a_killed_exporters_file_not_a_running_ones(tmp_path):
    # A killed ONNX or LiteRT export left its hidden file (the model's size) until removed
    # by hand.
    import signal

    from alignseg_keras.atomic import ABANDONED_AFTER_SECONDS

    path = tmp_path / "model.onnx"

    killed, killed_file = start_writer(FILE_EXPORTER, str(path))
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    running, running_file = start_writer(FILE_EXPORTER, str(path))
    try:
        fresh = killed_file.with_name(f"{TEMP_PREFIX}99999999-0123abcd-model.onnx")
        fresh.write_bytes(b"")  # unheld but new: its writer may be about to lock it
        other = killed_file.with_name(f"{TEMP_PREFIX}99999998-0123abcd-other.onnx")
        other.write_bytes(b"")  # another export's
        for file in (killed_file, running_file, other):
            age(file, ABANDONED_AFTER_SECONDS + 1)
        with pytest.warns(UserWarning) as warned:
            with atomic_path(path, remove_abandoned=True) as temporary:
                with open(temporary, "wb") as file:
                    file.write(b"new")
        removed = [str(w.message) for w in warned]
        assert removed == [f"Removed {killed_file}: an unfinished model.onnx that a killed "
                           "writer left."]
        assert path.read_bytes() == b"new"
        assert not killed_file.exists()
        assert running_file.read_bytes() == b"half" and fresh.exists() and other.exists()
        # Without the option (each picture of `alignseg predict`) no folder is listed.
        age(running_file, 0)
        running.send_signal(signal.SIGKILL)
        running.wait()
        age(running_file, ABANDONED_AFTER_SECONDS + 1)
        with atomic_path(path) as temporary:
            pathlib.Path(temporary).write_bytes(b"newer")
        assert running_file.exists() and path.read_bytes() == b"newer"
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()


def test_a_scratch_folder_is_held_and_removes_those_killed_processes_left(tmp_path, monkeypatch):
    # A killed process of a job left its scratch folder in /tmp, a whole model in it.
    import fcntl
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = time.time() - 3600
    folders = {}
    for name in ("killed", "running", "just-made"):
        folders[name] = tmp_path / f"scratch-{name}"
        folders[name].mkdir()
        (folders[name] / "checkpoint.keras").write_bytes(b"a model")
    for name in ("killed", "running"):
        os.utime(folders[name], (old, old))
    (tmp_path / "other-killed").mkdir()  # another prefix
    os.utime(tmp_path / "other-killed", (old, old))
    running = os.open(folders["running"], os.O_RDONLY)  # held as its process holds it
    fcntl.flock(running, fcntl.LOCK_EX)
    try:
        with pytest.warns(UserWarning, match=r"scratch-killed: the scratch folder of a killed process"):
            mine = pathlib.Path(held_scratch_folder("scratch-"))
    finally:
        os.close(running)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["scratch-running", "scratch-just-made", "other-killed", mine.name])
    assert mine.name.startswith("scratch-") and mine.is_dir()
    probe = os.open(mine, os.O_RDONLY)  # held for this process's life
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
