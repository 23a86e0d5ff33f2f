"""Files only their owner may read are written with mode 0600 and atomically (swarmpool/files.py)."""

from __future__ import annotations

import stat
from pathlib import Path

from swarmpool.files import write_private


def test_a_private_file_is_0600_even_over_a_leftover_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "operator.json"
    leftover = tmp_path / "operator.json.tmp"
    leftover.write_text("half a file from a crash")
    leftover.chmod(0o644)
    write_private(path, "secret\n")
    assert path.read_text() == "secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["operator.json"]


def test_a_private_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_private(path, b"old")
    inode = path.stat().st_ino
    write_private(path, "new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != inode  # renamed over, never rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
