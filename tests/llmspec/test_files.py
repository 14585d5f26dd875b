"""Atomic writes: a target is the old content or the new, never a mix; failures leave no debris."""

import pytest

from llmspec.files import publish_directory, staging_directory, write_atomic


def test_write_atomic_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _staged(target, content):
    staged = staging_directory(target)
    (staged / "a.txt").write_text(content)
    return staged


def test_publish_creates_a_new_directory(tmp_path):
    target = tmp_path / "artifact"
    publish_directory(_staged(target, "one"), target, replace=False)
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_publish_refuses_to_replace_without_permission(tmp_path):
    target = tmp_path / "artifact"
    publish_directory(_staged(target, "one"), target, replace=False)
    staged = _staged(target, "two")
    with pytest.raises(FileExistsError, match="--force"):
        publish_directory(staged, target, replace=False)
    assert (target / "a.txt").read_text() == "one"


def test_publish_swaps_an_existing_directory_and_removes_the_old_one(tmp_path):
    target = tmp_path / "artifact"
    publish_directory(_staged(target, "one"), target, replace=False)
    publish_directory(_staged(target, "two"), target, replace=True)
    assert (target / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_staging_directory_is_a_hidden_partial_sibling(tmp_path):
    staged = staging_directory(tmp_path / "artifact")
    assert staged.parent == tmp_path
    assert staged.name.startswith(".artifact.") and staged.name.endswith(".partial")
