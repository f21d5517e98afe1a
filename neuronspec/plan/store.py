"""Content-addressed artifact store with atomic writes, checksums and a run lock.

Layout under the store root (default `.neuronspec/` beside the study):

    objects/ab/abcdef…/      one finished stage: its files + meta.json (written last)
    tmp/                     entries being written; never read, swept by `gc`
    index/STUDY.json         the last resolved spec of every stage of a study (for `plan` to explain staleness)
    runs/RUN_ID/             run records and reports
    lock                     held (flock) while a run writes

An entry is visible only once its temp directory has been renamed into `objects/`, so a
run killed at any point leaves either a whole entry or none. `meta.json` lists every
file's sha256; an entry that fails the check is treated as missing and recomputed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats in repr form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temp file + rename) — also used outside entries (index, runs)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class CorruptEntry(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    def json(self, name: str = "result.json") -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- layout -----------------------------------------------------------------
    def _ensure(self) -> None:
        for sub in ("objects", "tmp", "index", "runs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def entry_dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    # -- reading ----------------------------------------------------------------
    def status(self, key: str) -> str:
        """'cached', 'missing' or 'corrupt' (a full checksum check of the entry)."""
        path = self.entry_dir(key)
        if not (path / "meta.json").exists():
            return "missing"
        try:
            self._verify(key)
        except CorruptEntry:
            return "corrupt"
        return "cached"

    def _verify(self, key: str) -> dict[str, Any]:
        path = self.entry_dir(key)
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            for name, sha in meta["files"].items():
                if file_sha256(path / name) != sha:
                    raise CorruptEntry(f"{name} fails its checksum")
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptEntry(str(exc)) from exc
        return meta

    def get(self, key: str) -> Entry:
        """A verified entry; raises KeyError if absent and CorruptEntry if damaged."""
        if not (self.entry_dir(key) / "meta.json").exists():
            raise KeyError(key)
        return Entry(key, self.entry_dir(key), self._verify(key))

    # -- writing ----------------------------------------------------------------
    def put(self, key: str, stage_id: str, kind: str, write: Callable[[Path], None], info: dict[str, Any] | None = None,
            replace: bool = False) -> Entry:
        """Run `write(tmpdir)`, checksum what it wrote, and publish the entry atomically.

        A valid entry already under `key` (a concurrent run finished first) is kept, unless
        `replace` (`run --force`): then the new result takes its place."""
        self._ensure()
        tmp = self.root / "tmp" / f"{key[:12]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            meta = {"key": key, "stage": stage_id, "kind": kind, "created": time.time(), "files": files, **(info or {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            final = self.entry_dir(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # corrupt leftover, a concurrent run finished first, or forced
                if not replace and self.status(key) == "cached":
                    shutil.rmtree(tmp)
                    return self.get(key)
                trash = self.root / "tmp" / f"old-{key[:12]}-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(key, final, meta)

    # -- locking ----------------------------------------------------------------
    @contextmanager
    def lock(self, wait: bool = True) -> Iterator[None]:
        """Exclusive lock over the store for the duration of a run (flock: released if the process dies)."""
        self._ensure()
        with open(self.root / "lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RuntimeError(f"another neuronspec run holds {self.root / 'lock'}") from None
                warnings.warn(f"waiting for another neuronspec run to release {self.root / 'lock'}", stacklevel=2)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- index of last specs (for `plan` explanations) ----------------------------
    def read_index(self, study: str) -> dict[str, Any]:
        path = self.root / "index" / f"{study}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_index(self, study: str, stages: dict[str, Any]) -> None:
        self._ensure()
        index = self.read_index(study)
        index.update(stages)
        write_json(self.root / "index" / f"{study}.json", index)

    # -- listing and garbage collection -----------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        out = []
        for meta_path in sorted((self.root / "objects").glob("*/*/meta.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            size = sum(p.stat().st_size for p in meta_path.parent.iterdir() if p.is_file())
            out.append({"key": meta.get("key"), "stage": meta.get("stage"), "kind": meta.get("kind"), "created": meta.get("created"), "bytes": size})
        return out

    def gc(self, keep: set[str]) -> tuple[int, int]:
        """Delete entries not in `keep` and every temp leftover. Returns (entries removed, bytes freed)."""
        removed, freed = 0, 0
        with self.lock(wait=False):
            for entry in self.entries():
                if entry["key"] not in keep:
                    shutil.rmtree(self.entry_dir(entry["key"]), ignore_errors=True)
                    removed += 1
                    freed += entry["bytes"]
            shutil.rmtree(self.root / "tmp", ignore_errors=True)
        return removed, freed
