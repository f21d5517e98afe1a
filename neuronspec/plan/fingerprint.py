"""Code fingerprints: a stage's cache key changes by itself when the code computing it changes.

A kind's fingerprint covers
  * its compute function, its spec class and the helpers of its module (`plan/kinds/FAMILY.py`)
    they use (found by name, transitively), and
  * every neuronspec module those reach by import — followed transitively through the
    modules' source, imports inside functions included. `from PKG import name` of a package
    counts every module directly in PKG (packages re-export, some lazily), `from PKG.MOD
    import name` just MOD.

The orchestration above the computations (`neuronspec.plan`, `neuronspec.report`, the CLI) is
not followed: how results are keyed, stored and shown does not change them, and following it
would tie every kind to every other (plan/graph.py reaches the whole registry). The modules
of the kinds' package other than the registry are followed like any other module.

Source is read from the files and parsed with `ast`, never imported, so fingerprinting needs
no torch. It is normalised: the AST dump ignores comments, whitespace, line numbers and
docstrings (none of them changes what is computed); any other edit, however small — a
renamed variable included — changes the fingerprint. That errs on recomputing. A Python
upgrade that changes the AST format changes fingerprints too (recomputed, never misread).
Third-party libraries are not fingerprinted: their versions are in the run record.

Each file's digest and imports are memoised by (size, mtime, inode, ctime) in the user cache, so an
unchanged study plans in milliseconds.
"""

from __future__ import annotations

import ast
import hashlib
import json
import marshal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronspec.fileio import stat_tag, write_json
from neuronspec.paths import user_cache

PACKAGE = "neuronspec"
#: the orchestration above the computations: how stages are keyed, stored, run and reported
#: (its own changes never change a stage's result; kinds' functions are fingerprinted one by one)
_MEMO_FORMAT = 1  # bump when what is memoised per file changes
NOT_FOLLOWED = ("neuronspec.plan", "neuronspec.report", "neuronspec.cli")
#: ...except the modules of the kinds themselves: what one kind's code shares with others (plan/kinds/base.py,
#: a family's helpers) computes results too. The registry (plan/kinds/__init__.py) reaches every kind, so it is not.
FOLLOWED_KINDS = "neuronspec.plan.kinds."


@dataclass(frozen=True)
class Fingerprint:
    """One digest for the key, and the digest of each part so `plan` can say what changed."""

    digest: str
    parts: dict[str, str]  # "neuronspec/methods/plnd.py" or "neuronspec/plan/kinds.py:stats_plnd" → digest

    def changed(self, old: dict[str, str]) -> list[str]:
        return sorted(p for p in set(old) | set(self.parts) if old.get(p) != self.parts.get(p))


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _hash(node: ast.AST) -> str:
    return hashlib.sha256(ast.dump(node, include_attributes=False).encode()).hexdigest()


def _walk_executed(node: ast.AST):  # noqa: ANN202
    """ast.walk, skipping `if TYPE_CHECKING:` blocks (imports there never run)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
            stack.extend(n.orelse)
            continue
        stack.extend(ast.iter_child_nodes(n))


def _imports(nodes: list[ast.AST], module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module imported, names imported from it) of every import under `nodes`, neuronspec only."""
    out: list[tuple[str, list[str]]] = []
    for top in nodes:
        for node in _walk_executed(top):
            if isinstance(node, ast.Import):
                out += [(a.name, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.split(".")[0] == PACKAGE:
                    out.append((name, [a.name for a in node.names]))
    return out


class _Source:
    """The neuronspec source tree under `root` (the folder holding the package)."""

    def __init__(self, root: Path):
        self.root = root
        self._memo_path = user_cache() / f"fingerprints-v{_MEMO_FORMAT}.json"
        try:
            self._memo: dict[str, Any] = json.loads(self._memo_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._memo = {}
        self._dirty = False
        self._trees: dict[Path, ast.Module] = {}

    def tree(self, path: Path) -> ast.Module:
        if path not in self._trees:
            self._trees[path] = _strip_docstrings(ast.parse(path.read_bytes(), filename=str(path)))  # type: ignore[assignment]
        return self._trees[path]

    def file(self, module: str) -> Path | None:
        base = self.root.joinpath(*module.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
        return None

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def module_info(self, module: str) -> tuple[str, str, list[tuple[str, list[str]]]]:
        """(relative path, digest, imports) of a module, memoised by `stat_tag`."""
        path = self.file(module)
        if path is None:
            raise ModuleNotFoundError(f"{module}: no source under {self.root}")
        tag = [str(path.resolve()), *stat_tag(path)]
        saved = self._memo.get(tag[0])
        if saved is None or saved["tag"] != tag:
            tree = self.tree(path)
            saved = {"tag": tag, "digest": _hash(tree),
                     "imports": _imports([tree], module, path.name == "__init__.py")}
            self._memo[tag[0]] = saved
            self._dirty = True
        return self.rel(path), saved["digest"], [(m, list(n)) for m, n in saved["imports"]]

    def save(self) -> None:
        if self._dirty:  # entries of files that are gone (copies of the package) are dropped
            self._memo = {path: entry for path, entry in self._memo.items() if Path(path).exists()}
            write_json(self._memo_path, self._memo, indent=None)
            self._dirty = False

    def targets(self, module: str, names: list[str]) -> list[str]:
        """The modules an import statement makes the code depend on (see the module docstring)."""
        path = self.file(module)
        if path is None:  # a namespace package (no __init__.py): `from neuronspec import distributed`
            return [f"{module}.{n}" for n in names if self.file(f"{module}.{n}") is not None]
        if path.name != "__init__.py":
            return [module]
        subs = [f"{module}.{n}" for n in names if self.file(f"{module}.{n}") is not None]
        if names and len(subs) == len(names):  # `from pkg import submodule, …`
            return subs
        folder = path.parent
        return [module] + sorted(f"{module}.{p.stem}" for p in folder.glob("*.py") if p.name != "__init__.py")


def _function_parts(src: _Source, module: str, names: list[str]) -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """Digests of the named top-level definitions of `module` and the same-module helpers they use."""
    path = src.file(module)
    assert path is not None
    tree = src.tree(path)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        stack += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in defs]
    used = {n.id for name in seen for n in ast.walk(defs[name]) if isinstance(n, ast.Name)}
    bound_imports: list[ast.AST] = [i for i in top_imports
                                    if any((a.asname or a.name).split(".")[0] in used for a in i.names)]  # type: ignore[attr-defined]
    rel = src.rel(path)
    parts = {f"{rel}:{name}": _hash(defs[name]) for name in sorted(seen)}
    return parts, _imports([defs[n] for n in seen] + bound_imports, module, False)


def _definitions(src: _Source, module: str, names: list[str]) -> list[str] | None:
    """`names` when every one is a top-level function or class of `module` (fingerprinted one by
    one); None when the import needs the whole module (a constant, a submodule, `import module`)."""
    path = src.file(module)
    if not names or path is None or path.name == "__init__.py":
        return None
    defs = {n.name for n in src.tree(path).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return names if all(n in defs for n in names) else None


def _compiled_parts(ref: CodeRef) -> dict[str, str]:
    """Digests of definitions whose source is not under the package root: their compiled code."""
    parts = {f"{ref.module}:{obj.__qualname__}": hashlib.sha256(marshal.dumps(obj.__code__)).hexdigest()
             for obj in ref.objects if hasattr(obj, "__code__")}
    if not parts:
        raise ModuleNotFoundError(f"{ref.module}: no source under the package and no compiled code for {ref.names}")
    return parts


def _root() -> Path:
    return Path(__file__).resolve().parents[2]  # the folder holding neuronspec/


@dataclass(frozen=True)
class CodeRef:
    """What a kind's fingerprint starts from: definitions `names` of `module`, plus `extra_modules`
    that its code reaches without an import statement (dispatch by name)."""

    module: str
    names: tuple[str, ...]
    extra_modules: tuple[str, ...] = ()
    # the objects themselves: fingerprinted by their compiled code when `module` has no source
    # under the package (a plugin, a test's stand-in)
    objects: tuple[Any, ...] = field(default=(), compare=False)


def modules_digest(modules: list[str], root: Path | None = None) -> str:
    """One digest of whole modules' normalised source (comments, docstrings and layout do not count)."""
    src = _Source(root or _root())
    parts = {rel: digest for rel, digest, _ in (src.module_info(m) for m in modules)}
    src.save()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def fingerprints(refs: dict[str, CodeRef], root: Path | None = None) -> dict[str, Fingerprint]:
    """The fingerprint of each ref (one pass over the source tree, memoised files shared)."""
    src = _Source(root or _root())
    out = {name: _fingerprint(src, ref) for name, ref in refs.items()}
    src.save()
    return out


def _fingerprint(src: _Source, ref: CodeRef) -> Fingerprint:
    if src.file(ref.module) is None:
        parts, pending = _compiled_parts(ref), []
    else:
        parts, pending = _function_parts(src, ref.module, list(ref.names))
    pending = pending + [(m, []) for m in ref.extra_modules]
    seen: set[str] = set()
    seen_defs: set[tuple[str, str]] = set()
    while pending:
        mod, imported = pending.pop()
        for target in src.targets(mod, imported):
            names = _definitions(src, target, imported) if target.startswith(FOLLOWED_KINDS) else None
            if names is not None:  # the kinds' shared helpers: function by function, like the compute's own module
                new = [n for n in names if (target, n) not in seen_defs]
                seen_defs.update((target, n) for n in new)
                if new:
                    more, imports = _function_parts(src, target, new)
                    parts.update(more)
                    pending += imports
                continue
            if target in seen or (target.startswith(NOT_FOLLOWED) and not target.startswith(FOLLOWED_KINDS)):
                continue
            seen.add(target)
            rel, dig, imports = src.module_info(target)
            parts[rel] = dig
            pending += imports
    return Fingerprint(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts)
