"""Files only their owner may read (credentials, keys, the nats-server config), written whole or not at all."""

from __future__ import annotations

from pathlib import Path


def write_private(path: Path, content: str | bytes) -> None:
    """Write `content` to `path` with mode 0600, atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)  # touch keeps the mode of a leftover temporary file
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    tmp.replace(path)
