"""Two runs on one output that finish together: the first rename stays, the second run fails
with "exists" (docs/reliability.md, "Two runs on one output")."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from geoddu.errors import GeodduError
from geoddu.io.atomic import TEMP_MARKER, AtomicOutput


def test_a_commit_between_the_others_check_and_rename_fails(tmp_path: Path, monkeypatch) -> None:
    """Run a has checked that the destination is free and is about to rename; run b commits
    then. Before the folder lock, b passed the same check, renamed, exited 0, and a's rename
    then replaced b's result: two successes, one result lost."""
    dst = tmp_path / "map.tif"
    a, b = AtomicOutput(dst), AtomicOutput(dst)
    a.temp.write_bytes(b"a")
    b.temp.write_bytes(b"b")
    real_replace = os.replace
    a_checked, release = threading.Event(), threading.Event()

    def replace(src: os.PathLike, dest: os.PathLike) -> None:
        if Path(src) == a.temp:
            a_checked.set()
            release.wait(10)
        real_replace(src, dest)

    monkeypatch.setattr(os, "replace", replace)
    errors: list[str] = []

    def commit_b() -> None:
        try:
            b.commit()
        except GeodduError as exc:
            errors.append(str(exc))

    ta = threading.Thread(target=a.commit)
    ta.start()
    try:
        assert a_checked.wait(10)
        tb = threading.Thread(target=commit_b)
        tb.start()
        tb.join(0.5)
        assert tb.is_alive(), "b committed while a was between its check and its rename"
    finally:
        release.set()
        ta.join(10)
    tb.join(10)
    assert dst.read_bytes() == b"a"
    assert errors == [f"{dst} exists; pass --overwrite to replace it"]
    assert not [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]


@pytest.mark.parametrize("overwrite", [False, True])
def test_commit_works_where_the_folder_cannot_be_locked(tmp_path: Path, monkeypatch,
                                                        overwrite: bool) -> None:
    """A file system that refuses flock on a folder (some network ones): committed unlocked."""
    import geoddu.io.atomic as atomic

    def refuse(fd: int, op: int) -> None:
        raise OSError(37, "No locks available")

    if atomic.fcntl is not None:
        monkeypatch.setattr(atomic.fcntl, "flock", refuse)
    dst = tmp_path / "map.tif"
    if overwrite:
        dst.write_bytes(b"old")
    out = AtomicOutput(dst, overwrite=overwrite)
    out.temp.write_bytes(b"new")
    out.commit()
    assert dst.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [dst]
