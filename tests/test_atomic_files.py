"""Files nanofly writes whole (policy.pt, checkpoint.npz, export directories): permissions
from the umask, the directory synced after the rename, and an export replaced without a
moment in which its directory is missing."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from nanofly.export import exporter
from nanofly.train.checkpoint_file import save_checkpoint
from nanofly.policy.actor import init_actor, save_policy

from helpers.exports import quick_export, write_policy


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_hover_policy(path):
    return save_policy(path, init_actor([146, 8, 4], 0), observation={"dim": 146},
                       action={"dim": 4}, vehicle={"preset": "crazyflie_paper"})


def test_policy_and_checkpoint_files_follow_the_umask(tmp_path, umask_027):
    policy = write_hover_policy(tmp_path / "policy.pt")
    checkpoint = tmp_path / "checkpoint.npz"
    save_checkpoint(checkpoint, {"step": 3, "weights": np.zeros(4, np.float32)})
    assert mode(policy) == 0o640  # 0666 & ~027; a temporary file's 0600 before
    assert mode(checkpoint) == 0o640
    os.umask(0o002)
    assert mode(write_hover_policy(tmp_path / "shared.pt")) == 0o664
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "policy.pt",
                                                          "shared.pt"]  # no temporary left


def test_export_directory_and_files_follow_the_umask(tmp_path, umask_027):
    policy = write_policy(tmp_path / "p.pt", sizes=(146, 8, 4))
    quick_export(policy, tmp_path / "out", num_calibration=256, num_eval=128)
    assert mode(tmp_path / "out") == 0o750  # mkdtemp's 0700, then a fixed 0755, before
    entries = list((tmp_path / "out").rglob("*"))
    assert {mode(d) for d in entries if d.is_dir()} == {0o750}  # the runtime's kernels/
    assert {mode(f) for f in entries if f.is_file()} == {0o640}


class FsyncSpy:
    """Wraps os.fsync (the real call still happens) and records what each call synced."""

    def __init__(self, monkeypatch):
        self.synced: list[tuple[bool, int]] = []  # (is a directory, inode)
        real = os.fsync

        def fsync(fd):
            st = os.fstat(fd)
            self.synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
            return real(fd)
        monkeypatch.setattr(os, "fsync", fsync)

    def directories(self) -> list[int]:
        return [ino for is_dir, ino in self.synced if is_dir]


def test_policy_file_rename_is_synced_in_its_directory(tmp_path, monkeypatch):
    spy = FsyncSpy(monkeypatch)
    write_hover_policy(tmp_path / "policy.pt")
    assert spy.synced[-1] == (True, os.stat(tmp_path).st_ino)  # the file, then its directory


def test_export_is_synced_file_by_file_then_its_directories(tmp_path, monkeypatch):
    policy = write_policy(tmp_path / "p.pt", sizes=(146, 8, 4))
    spy = FsyncSpy(monkeypatch)
    quick_export(policy, tmp_path / "out", num_calibration=256, num_eval=128)
    out = tmp_path / "out"
    # each file, then the runtime's kernels/ folder, the export directory and its parent
    assert spy.directories() == [os.stat(out / "kernels").st_ino, os.stat(out).st_ino,
                                 os.stat(tmp_path).st_ino]
    assert len(spy.synced) == len([f for f in out.rglob("*") if f.is_file()]) + 3


def test_replacing_an_export_never_leaves_the_directory_missing(tmp_path, monkeypatch):
    a, b = tmp_path / "probe_a", tmp_path / "probe_b"
    a.mkdir(), b.mkdir()
    if not exporter._exchange(a, b):
        pytest.skip("this system or file system cannot exchange two paths (renameat2)")
    p1 = write_policy(tmp_path / "p1.pt", sizes=(146, 8, 4), seed=1)
    p2 = write_policy(tmp_path / "p2.pt", sizes=(146, 8, 4), seed=2)
    out = tmp_path / "out"
    first = quick_export(p1, out, num_calibration=256, num_eval=128)
    missing_after = []

    def watching(real):
        def rename(src, dst, *args, **kwargs):
            result = real(src, dst, *args, **kwargs)
            if not (out / "manifest.json").is_file():
                missing_after.append((str(src), str(dst)))
            return result
        return rename
    monkeypatch.setattr(os, "replace", watching(os.replace))
    monkeypatch.setattr(os, "rename", watching(os.rename))
    second = quick_export(p2, out, num_calibration=256, num_eval=128)
    assert missing_after == []  # the old code renamed the export aside first
    assert second["policy"]["sha256"] != first["policy"]["sha256"]
    assert (out / "manifest.json").read_text().count(second["policy"]["sha256"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p1.pt", "p2.pt", "probe_a",
                                                          "probe_b"]  # nothing left aside


def test_export_over_a_failed_exchange_target_keeps_the_old_export(tmp_path, monkeypatch):
    """Where no exchange is possible, the old export is renamed aside, and put back when the
    new one cannot be renamed in."""
    policy = write_policy(tmp_path / "p.pt", sizes=(146, 8, 4))
    out = tmp_path / "out"
    quick_export(policy, out, num_calibration=256, num_eval=128)
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(exporter, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def failing_second_rename(src, dst):
        if ".out.tmp-" in str(src):  # the new export: the disk is full
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", failing_second_rename)
    with pytest.raises(exporter.ExportError, match="No space left"):
        quick_export(policy, out, num_calibration=256, num_eval=128)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.pt"]
