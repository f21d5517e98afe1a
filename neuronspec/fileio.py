"""Digests of files, atomic JSON writes and bounded reads of small text files: the one
implementation of each.

A JSON file is written to a temp file in the same folder and renamed over the target, so a
reader sees the old file or the new one, never half of one; a failed write (a full disk)
removes its temp file. `memo_sha256` remembers a file's digest by (path, size, mtime, inode,
ctime), so a 14 GB checkpoint is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import Any, TextIO

from neuronspec.paths import user_cache


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class TextFileError(ValueError):
    """A small file (a study, a task YAML, a neuron-set file) that cannot be used, and where: 1-based line and column."""

    def __init__(self, path: str | Path, message: str, line: int = 1, col: int = 1) -> None:
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path, self.message, self.line, self.col = str(path), message, line, col


def read_small_bytes(path: str | Path, max_bytes: int, too_big: str = "") -> bytes:
    """The bytes of a regular file of at most `max_bytes`. A device such as /dev/zero, a FIFO or a
    folder is refused without reading it or waiting for a writer; `too_big` ends the size message."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise TextFileError(path, "not a regular file (a device, FIFO or folder)")
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise TextFileError(path, f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise TextFileError(path, f"larger than {max_bytes // 1024} KiB{too_big}")
    return data


def read_small_text(path: str | Path, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` (a BOM dropped), read by `read_small_bytes`."""
    data = read_small_bytes(path, max_bytes, ": not a file written by hand")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and b"\x00" in data[:2]):
        raise TextFileError(path, "the file is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        raise TextFileError(path, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8", line, col) from None


def stat_tag(path: Path) -> list[int]:
    """What must be unchanged for a file's memoised digest to hold. Size and mtime alone miss a
    file rewritten in place with its mtime restored (`os.utime`); that still changes the ctime,
    which no user call can set back, and a replacement by rename changes the inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns]


def memo_sha256(path: str | Path) -> str:
    """`file_sha256`, memoised in the user cache (one small file per path) by `stat_tag`."""
    path = Path(path).resolve()
    memo = user_cache() / "digests" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    tag = stat_tag(path)
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved["tag"] == tag:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sha = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json(memo, {"path": str(path), "tag": tag, "sha256": sha})
    return sha


def json_default(value: Any) -> Any:
    """JSON for the values neuronspec writes besides plain data: Pydantic models, sets, paths."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def write_atomic(path: str | Path, write: Callable[[TextIO], None]) -> Path:
    """Write a text file atomically: `write` fills a temp file beside `path`, which is renamed over
    it; no temp file is left behind on failure. Every output file neuronspec writes goes through here."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """`text` into `path`, atomically."""
    return write_atomic(path, lambda f: f.write(text))


def write_json(path: str | Path, value: Any, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """Write JSON atomically (temp file + rename); no temp file is left behind on failure."""
    return write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=False,
                                       default=json_default) + "\n")
