"""Load a study: ruamel.yaml round trip → `extends` merge → `--set` overrides → Pydantic.

ruamel's round-trip loader keeps the line and column of every key and item, so any
error — from the YAML parser, from Pydantic or from a later check — can be mapped back
to `FILE:LINE:COL`. Merging `extends:` keeps each node's own position and remembers
which file it came from.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from neuronspec.fileio import TextFileError, read_small_text
from neuronspec.spec.errors import Location, Problem, StudyError
from neuronspec.spec.models import ModelSpec, Study
from neuronspec.spec.validation import validate_study

Path_ = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Finds the file, line and column of a field path in the merged YAML tree."""

    tree: CommentedMap
    # (id(container), key) -> file; key None = the container itself. Per key, because
    # `extends` merges keys of several files into one mapping.
    origin: dict[tuple[int, Any], str] = field(default_factory=dict)
    overrides: dict[Path_, str] = field(default_factory=dict)  # path -> "a.b=value"
    default_file: str = "<study>"

    def locate(self, loc: Sequence[str | int]) -> tuple[Location, str]:
        """Location of the deepest node of `loc` present in the tree, and its dotted path.

        Elements of `loc` that are not keys/indices (Pydantic's union branch names) are skipped.
        """
        node: Any = self.tree
        walked: list[str | int] = []
        container, key = self.tree, None
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                container, key = node, part
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                container, key = node, part
            else:
                continue
            walked.append(part)
            node = node[part]
        dotted = ".".join(str(p) for p in walked) if walked else ".".join(str(p) for p in loc if isinstance(p, (str, int)))
        for path, text in self.overrides.items():
            if tuple(walked[: len(path)]) == path and walked:
                return Location("", 0, 0, override=text), dotted
        file = self.origin.get((id(container), key)) or self.origin.get((id(container), None), self.default_file)
        line, col = _position(container, key)
        return Location(file, line, col), dotted

    def problem(self, loc: Sequence[str | int], message: str) -> Problem:
        location, dotted = self.locate(loc)
        return Problem(location, dotted, message)


def _position(container: Any, key: str | int | None) -> tuple[int, int]:
    try:
        if key is None:
            line, col = container.lc.line, container.lc.col
        elif isinstance(container, CommentedMap):
            line, col = container.lc.key(key) if key in container.lc.data else _merged_position(container, key)
        else:
            line, col = container.lc.item(key)
        return line + 1, col + 1
    except (AttributeError, KeyError, TypeError):
        return 1, 1


def _merged_position(container: CommentedMap, key: str | int) -> tuple[int, int]:
    """0-based position of a key a YAML merge (`<<: *anchor`) brought in: where the anchored
    mapping (or one it merges in turn) writes it."""
    for source in getattr(container, "merge", None) or ():
        if isinstance(source, CommentedMap) and key in source:
            return source.lc.key(key) if key in source.lc.data else _merged_position(source, key)
    raise KeyError(key)


@dataclass
class LoadedStudy:
    study: Study
    path: Path | None
    source: SourceMap
    text: str  # the study file's own text, for run records and diffs


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


#: values a study may expand to (a real study has a few hundred; YAML aliases can multiply a
#: 1 KB file into billions — refused before anything walks the expanded tree)
MAX_VALUES = 100_000


def _check_size(tree: Any, file: str) -> None:
    count, stack = 0, [(tree, None, None)]
    while stack:
        node, parent, key = stack.pop()
        count += 1
        if count > MAX_VALUES:
            line, col = _position(parent, key) if parent is not None else (1, 1)
            raise StudyError([Problem(Location(file, line, col), "", f"the study expands to more than {MAX_VALUES:,} "
                                      "values (YAML aliases repeating aliases?); refusing to read it")])
        if isinstance(node, CommentedMap):
            stack.extend((v, node, k) for k, v in node.items())
        elif isinstance(node, CommentedSeq):
            stack.extend((v, node, i) for i, v in enumerate(node))


#: A study is a page of YAML; `extends: /dev/zero` must not grow to gigabytes.
MAX_STUDY_BYTES = 1 << 20
MAX_EXTENDS = 32


def read_text(path: Path) -> str:
    """A study file's text; a file too big, not regular or not UTF-8 is a located error (not a traceback)."""
    try:
        return read_small_text(path, MAX_STUDY_BYTES)
    except TextFileError as exc:
        raise StudyError([Problem(Location(exc.path, exc.line, exc.col), "", exc.message)]) from None


def _parse(text: str, file: str) -> CommentedMap:
    try:
        data = _yaml().load(io.StringIO(text))
    except RecursionError:  # ruamel composes nested nodes recursively: 20,000 `[` exhaust the stack
        raise StudyError([Problem(Location(file, 1, 1), "", "the YAML is nested too deeply to be a study")]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise StudyError([Problem(Location(file, line, col), "", f"YAML syntax: {exc.problem or exc}")]) from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise StudyError([Problem(Location(file, 1, 1), "", "a study must be a YAML mapping")])
    _check_size(data, file)
    return data


def _mark_origin(node: Any, file: str, origin: dict[tuple[int, Any], str]) -> None:
    if isinstance(node, (CommentedMap, CommentedSeq)):
        origin[(id(node), None)] = file
        for key in node if isinstance(node, CommentedMap) else range(len(node)):
            origin[(id(node), key)] = file
            _mark_origin(node[key], file, origin)


def _merge(base: CommentedMap, over: CommentedMap, origin: dict[tuple[int, Any], str]) -> CommentedMap:
    """Deep-merge mappings (lists and scalars in `over` replace those in `base`)."""
    for key, value in over.items():
        if isinstance(value, CommentedMap) and isinstance(base.get(key), CommentedMap):
            _merge(base[key], value, origin)
        else:
            base[key] = value
            origin[(id(base), key)] = origin[(id(over), key)]
            # keep the overriding key's own position for error messages
            try:
                base.lc.data[key] = over.lc.data[key]
            except (AttributeError, KeyError):
                pass
    return base


def _read_tree(path: Path, origin: dict[tuple[int, Any], str], seen: tuple[Path, ...] = ()) -> CommentedMap:
    file = str(path)
    if len(seen) >= MAX_EXTENDS:
        raise StudyError([Problem(Location(file, 1, 1), "extends", f"more than {MAX_EXTENDS} studies deep in `extends`")])
    if path.resolve() in seen:
        raise StudyError([Problem(Location(file, 1, 1), "extends", "circular extends: " + " → ".join(map(str, seen + (path,))))])
    tree = _parse(read_text(path), file)
    _mark_origin(tree, file, origin)
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not parent.strip():
        line, col = _position(tree, None)
        raise StudyError([Problem(Location(file, line, col), "extends", "extends must be a path to another study")])
    base_path = (path.parent / parent).resolve()
    if not base_path.exists():
        raise StudyError([Problem(Location(file, 1, 1), "extends", f"base study {parent!r} not found (looked at {base_path})")])
    base = _read_tree(base_path, origin, seen + (path.resolve(),))
    # `model` and `models` replace each other: extending a one-model study with `models:`
    # runs that same study on several models.
    for mine, theirs in (("model", "models"), ("models", "model")):
        if mine in tree and theirs in base:
            del base[theirs]
    return _merge(base, tree, origin)


def parse_override(text: str) -> tuple[Path_, Any]:
    """`detect.plnd.epsilon.quantile=0.95` → (('detect','plnd','epsilon','quantile'), 0.95)."""
    if "=" not in text:
        raise StudyError([Problem(Location("", 0, 0, override=text), "", "overrides look like dotted.key=value")])
    dotted, raw = text.split("=", 1)
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in dotted.strip().split(".")]
    try:
        value = _yaml().load(io.StringIO(raw)) if raw.strip() else ""
    except MarkedYAMLError as exc:
        raise StudyError([Problem(Location("", 0, 0, override=text), dotted, f"value is not YAML: {exc.problem}")]) from None
    except RecursionError:
        raise StudyError([Problem(Location("", 0, 0, override=text), dotted, "the value is nested too deeply")]) from None
    _check_size(value, f"--set {text}")
    return tuple(parts), value


def apply_overrides(tree: CommentedMap, overrides: Iterable[str], source: SourceMap) -> None:
    for text in overrides:
        path, value = parse_override(text)
        node: Any = tree
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, CommentedSeq):
                if not isinstance(part, int) or part >= len(node):
                    raise StudyError([Problem(Location("", 0, 0, override=text), ".".join(map(str, path)), f"no item {part} here")])
                node = node[part]
                continue
            if part not in node or not isinstance(node[part], (CommentedMap, CommentedSeq)):
                node[part] = CommentedSeq() if isinstance(nxt, int) else CommentedMap()
            node = node[part]
        last = path[-1]
        if isinstance(node, CommentedSeq) and isinstance(last, int) and last == len(node):
            node.append(value)
        elif isinstance(node, CommentedSeq) and (not isinstance(last, int) or not 0 <= last < len(node)):
            raise StudyError([Problem(Location("", 0, 0, override=text), ".".join(map(str, path)),
                                      f"no item {last} here (the list has {len(node)}; {len(node)} appends one)")])
        else:
            node[last] = value
        source.overrides[path] = text


def load_study(path: str | Path | None = None, overrides: Sequence[str] = (), *, text: str | None = None, name: str = "<study>") -> LoadedStudy:
    """Read, merge, override and validate a study. Raises `StudyError` listing every problem."""
    origin: dict[tuple[int, Any], str] = {}
    if text is not None:
        file = str(path) if path else name
        tree = _parse(text, file)
        _mark_origin(tree, file, origin)
        if "extends" in tree:
            raise StudyError([Problem(Location(file, 1, 1), "extends", "extends needs a study read from a file")])
        study_path = Path(path) if path else None
    else:
        assert path is not None
        study_path = Path(path)
        file = str(study_path)
        tree = _read_tree(study_path, origin)
        text = read_text(study_path)
    source = SourceMap(tree=tree, origin=origin, default_file=file)
    apply_overrides(tree, overrides, source)
    study = validate_study(_plain(tree, source), source)
    if study_path is not None:
        study = resolve_paths(study, study_path.parent)
    return LoadedStudy(study=study, path=study_path, source=source, text=text)


def _local_path(value: str, base: Path) -> str | None:
    """`value` made absolute against `base` when it names something there (or says it is a path:
    ./x, ../x); None when it is absolute or not a path (a hub id such as org/name)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return None
    candidate = base / path
    if value.startswith(("./", "../")) or candidate.exists():
        return os.path.normpath(candidate.absolute())
    return None


def resolve_paths(study: Study, base: Path) -> Study:
    """Relative model folders, corpus files and neuron-set files as paths from the study's folder `base`
    (`extends` already is): the study means the same files from any working folder."""
    from neuronspec.models.catalog import is_embedded

    def model(spec: ModelSpec) -> ModelSpec:
        found = None if is_embedded(spec.id) else _local_path(spec.id, base)
        return spec if found is None else spec.model_copy(update={"id": found})

    corpora = {}
    for name, c in study.corpora.items():
        if c.source.startswith("builtin:"):
            corpora[name] = c
        elif c.source.startswith("hf:"):  # local data files and folders: datasets' base_dir
            corpora[name] = c if "base_dir" in c.options else c.model_copy(
                update={"options": {**c.options, "base_dir": str(base.absolute())}})
        else:
            path = Path(c.source.strip()).expanduser()
            corpora[name] = c if path.is_absolute() else c.model_copy(
                update={"source": os.path.normpath(base.absolute() / path)})
    neurons = {name: v if isinstance(v, str) else
               v.model_copy(update={"file": os.path.normpath(base.absolute() / Path(v.file).expanduser())})
               for name, v in study.neurons.items()}
    update: dict[str, Any] = {"corpora": corpora, "neurons": neurons}
    if study.models:  # leave the unused default `model` alone (and out of the fields set)
        update["models"] = {n: model(m) for n, m in study.models.items()}
    elif model(study.model) is not study.model:
        update["model"] = model(study.model)
    return study.model_copy(update=update)


def _plain(node: Any, source: SourceMap, path: Path_ = ()) -> Any:
    """ruamel containers → plain dicts/lists (Pydantic wants plain data). Keys become strings:
    two keys that differ only in type (`1:` and `"1":`) would silently become one, so they are refused."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        given: dict[str, Any] = {}
        for k, v in node.items():
            if str(k) in given:
                raise StudyError([source.problem(path + (k,), f"keys {given[str(k)]!r} and {k!r} are both "
                                                 f"{str(k)!r}; keep one")])
            given[str(k)] = k
            out[str(k)] = _plain(v, source, path + (k,))
        return out
    if isinstance(node, CommentedSeq):
        return [_plain(v, source, path + (i,)) for i, v in enumerate(node)]
    for plain in (bool, int, float, str):  # ruamel's Scalar* subclasses → builtins, for clean JSON
        if isinstance(node, plain):
            return plain(node)
    return node
