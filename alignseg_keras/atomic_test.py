"""atomic_folder: a folder written as a whole appears complete or not at all."""

import pytest

from alignseg_keras.atomic import TEMP_PREFIX
from alignseg_keras.atomic import atomic_folder
from alignseg_keras.atomic import check_replaceable_folder

ENTRIES = ("model.pb", "variables")


def write_model(folder, text):
    (folder / "variables").mkdir()
    (folder / "variables" / "data").write_text(text)
    (folder / "model.pb").write_text(text)


def read_model(folder):
    return (folder / "model.pb").read_text(), (folder / "variables" / "data").read_text()


def test_a_new_folder_appears_only_when_complete(tmp_path):
    path = tmp_path / "models" / "1"
    with atomic_folder(path, ENTRIES) as temporary:
        write_model(temporary, "new")
        assert not path.exists()
        assert temporary.parent == path.parent and temporary.name.startswith(TEMP_PREFIX)
    assert read_model(path) == ("new", "new")
    assert [entry.name for entry in path.parent.iterdir()] == ["1"]


def test_an_earlier_folder_of_the_kind_is_replaced(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    with atomic_folder(path, ENTRIES) as temporary:
        write_model(temporary, "new")
        assert read_model(path) == ("old", "old")
    assert read_model(path) == ("new", "new")
    assert [entry.name for entry in tmp_path.iterdir()] == ["1"]


def test_an_empty_folder_is_replaced(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    with atomic_folder(path, ENTRIES) as temporary:
        write_model(temporary, "new")
    assert read_model(path) == ("new", "new")


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    path = tmp_path / "1"
    path.mkdir()
    write_model(path, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_folder(path, ENTRIES) as temporary:
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
        with atomic_folder(path, ENTRIES):
            raise AssertionError("never reached")
    assert read_model(path) == ("old", "old")
    assert (path / "notes.txt").read_text() == "mine"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["1"]


def test_a_file_is_refused(tmp_path):
    path = tmp_path / "1"
    path.write_text("a file")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_replaceable_folder(path, ENTRIES)
    check_replaceable_folder(tmp_path / "absent", ENTRIES)
