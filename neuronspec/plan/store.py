"""Content-addressed artifact store with atomic writes, checksums and a run lock.

Layout under the store root (default `.neuronspec/` beside the study):

    neuronspec-store.json    marks the folder as a store: `gc` deletes nothing in a folder without it
    .gitignore               `*`: a store beside a study in a git repository is never committed
    objects/ab/abcdef…/      one finished stage: its files + meta.json (written last)
    content/ab/abcdef…       a content key (neuronspec.plan.content) → the key of the entry computed from it
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
import re
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from neuronspec.fileio import file_sha256, json_default, write_json, write_text


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats in repr form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_default)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


class CorruptEntry(Exception):
    pass


class StoreError(Exception):
    """The store cannot be used as asked (not a folder, not writable, not a store): the CLI exits 2."""


MARKER = "neuronspec-store.json"
_KEY = re.compile(r"[0-9a-f]{64}")  # a stage key (sha256 hex): what a content-index file may name
INCOMING = ".incoming-"  # runs/.incoming-RUN_ID: a run folder being written (not a run id), swept by gc
STORE_FORMAT = 1
#: folders a store made before the marker existed always has
_LEGACY_LAYOUT = ("objects", "index", "lock")


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    meta: dict[str, Any]
    #: the only files a stage may read (its declared `reads`; None: every file). Reading another
    #: would make its result depend on content its content key does not cover.
    readable: frozenset[str] | None = None

    def file(self, name: str) -> Path:
        if self.readable is not None and name not in self.readable:
            raise KeyError(f"{name} of {self.meta.get('stage')} was not declared as read (reads: {sorted(self.readable)})")
        return self.path / name

    def json(self, name: str = "result.json") -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._ready = False  # _ensure has checked (and made) the layout

    # -- layout -----------------------------------------------------------------
    def recognised(self) -> bool:
        """Whether the folder is a store: it carries the marker (or the layout of a store made
        before the marker existed)."""
        if (self.root / MARKER).is_file():
            self._check_format()
            return True
        return all((self.root / name).exists() for name in _LEGACY_LAYOUT) and (self.root / "objects").is_dir()

    def _check_format(self) -> None:
        """A marker of another format is a store this version cannot read correctly: say so."""
        try:
            marker = json.loads((self.root / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise StoreError(f"{self.root / MARKER} is not readable JSON; is {self.root} a neuronspec store?") from None
        found = marker.get("format") if isinstance(marker, dict) else None
        if found != STORE_FORMAT:
            raise StoreError(f"{self.root} is a neuronspec store of format {found!r}; this version reads format "
                             f"{STORE_FORMAT} (use the neuronspec that made it, or another --store)")

    def _ensure(self) -> None:
        """Create the store (or check it) before writing: a clear error, never a half-made store
        in a file's place or in some unrelated folder."""
        if self._ready:
            return
        try:
            exists, is_dir = self.root.exists(), self.root.is_dir()
        except OSError as exc:  # a path too long for the file system, say
            raise StoreError(f"cannot use the store {str(self.root)[:200]}…: {exc.strerror or exc}") from None
        if exists and not is_dir:
            raise StoreError(f"store {self.root} is not a folder")
        if is_dir and any(self.root.iterdir()) and not self.recognised():
            raise StoreError(f"{self.root} is not empty and is not a neuronspec store (no {MARKER}); "
                             "pick another --store")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("objects", "tmp", "index", "runs", "content"):
                (self.root / sub).mkdir(exist_ok=True)
            if not (self.root / MARKER).exists():
                write_json(self.root / MARKER, {"format": STORE_FORMAT, "what": "neuronspec artifact store"})
            else:
                self._check_format()
            if not (self.root / ".gitignore").exists():
                (self.root / ".gitignore").write_text("# neuronspec artifact store: never commit it\n*\n", encoding="utf-8")
            if not os.access(self.root, os.W_OK) or not os.access(self.root / "objects", os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise StoreError(f"cannot write the store {self.root}: {exc.strerror or exc}") from None
        self._ready = True

    def entry_dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def _content_file(self, content: str) -> Path:
        return self.root / "content" / content[:2] / content

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
        if path.is_symlink() or path.parent.is_symlink():
            raise CorruptEntry(f"{path} is reached through a symbolic link; entries are plain folders")
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            if meta["key"] != key:  # an entry moved or copied under another key answers another question
                raise CorruptEntry(f"meta.json records key {str(meta['key'])[:12]}…, not the {key[:12]}… it lies under")
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

    def meta(self, key: str) -> dict[str, Any] | None:
        """An entry's meta.json as written (not verified: `status` and `get` do that), or None."""
        try:
            meta = json.loads((self.entry_dir(key) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("key") == key else None

    def _content_target(self, path: Path) -> str | None:
        """The entry key a content-index file names: a key, or None (never a path to follow)."""
        try:
            key = path.read_text(encoding="utf-8")[:80].strip()
        except (OSError, UnicodeDecodeError):
            return None
        return key if _KEY.fullmatch(key) else None

    def find_content(self, content: str) -> Entry | None:
        """The verified entry computed from inputs with this content key, if the store still holds it."""
        key = self._content_target(self._content_file(content))
        if key is None:
            return None
        try:
            entry = self.get(key)
        except (KeyError, CorruptEntry):
            return None
        return entry if entry.meta.get("content") == content else None

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
        if isinstance(meta.get("content"), str):  # findable by what it was computed from
            path = self._content_file(meta["content"])
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, key)
        return Entry(key, final, meta)

    def reuse(self, key: str, stage_id: str, kind: str, source: Entry, info: dict[str, Any]) -> Entry:
        """Publish `source`'s files under `key` (hard links where the file system allows, else
        copies): a stage whose inputs are identical in content to those `source` was computed from."""
        def write(out: Path) -> None:
            for name in source.meta["files"]:
                try:
                    os.link(source.path / name, out / name)
                except OSError:  # no hard links here (another file system): same bytes, copied
                    shutil.copyfile(source.path / name, out / name)

        return self.put(key, stage_id, kind, write, info={**info, "reused_from": {"key": source.key,
                                                                               "stage": source.meta.get("stage")}})

    # -- locking ----------------------------------------------------------------
    @contextmanager
    def lock(self, wait: bool = True) -> Iterator[None]:
        """Exclusive lock over the store for the duration of a run (flock: released if the process dies)."""
        self._ensure()
        if (self.root / "lock").is_symlink():
            raise StoreError(f"{self.root / 'lock'} is a symbolic link; a store's lock is a plain file")
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
        """Every finished entry, keyed by its folder's name (what `meta.json` says is never trusted
        to locate anything)."""
        out = []
        for folder in self._walk_objects()[0]:
            meta_path = folder / "meta.json"
            if not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            out.append({"key": folder.name, "stage": meta.get("stage"), "kind": meta.get("kind"),
                        "created": meta.get("created"), "bytes": size, "path": str(folder)})
        return out

    def _walk_objects(self) -> tuple[list[Path], list[Path]]:
        """(`objects/XX/KEY` folders, symbolic links) under `objects/`, found without following a
        link anywhere; neuronspec never makes a link there, so gc unlinks those it finds."""
        objects = self.root / "objects"
        if objects.is_symlink() or not objects.is_dir():
            return [], []
        folders: list[Path] = []
        links = [d for d in objects.iterdir() if d.is_symlink()]
        for shard in sorted(d for d in objects.iterdir() if d.is_dir() and not d.is_symlink()):
            for entry in sorted(shard.iterdir()):
                (links if entry.is_symlink() else folders if entry.is_dir() else []).append(entry)
        return folders, links

    def gc(self, keep: set[str]) -> tuple[int, int]:
        """Delete entries not in `keep` and every temp leftover. Returns (entries removed, bytes freed).

        Only inside a recognised store, and only folders found under its own `objects/` and
        `tmp/` (symlinks are unlinked, never followed)."""
        if not self.recognised():
            raise StoreError(f"{self.root} is not a neuronspec store (no {MARKER}): nothing deleted")
        removed, freed = 0, 0
        with self.lock(wait=False):
            for entry in self.entries():
                if entry["key"] not in keep:
                    _remove(Path(entry["path"]))
                    removed += 1
                    freed += entry["bytes"]
            for link in self._walk_objects()[1]:
                link.unlink(missing_ok=True)
            content = self.root / "content"
            if content.is_dir() and not content.is_symlink():  # content keys whose entry is gone
                for path in content.glob("*/*"):
                    target = None if path.is_symlink() or not path.is_file() else self._content_target(path)
                    if path.is_symlink() or (path.is_file() and (target is None or self.meta(target) is None)):
                        path.unlink(missing_ok=True)
            tmp = self.root / "tmp"
            if tmp.is_dir() and not tmp.is_symlink():
                for leftover in tmp.iterdir():
                    _remove(leftover)
            runs = self.root / "runs"
            if runs.is_dir() and not runs.is_symlink():  # run folders a killed run left half-written
                for leftover in runs.glob(f"{INCOMING}*"):
                    _remove(leftover)
        return removed, freed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
