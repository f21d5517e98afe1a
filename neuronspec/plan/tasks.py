"""Where an lm-evaluation-harness task comes from, and what its cache key must cover.

A task named in a study is either a YAML in the evaluation's `include_path` (found by its
`task:` name, as lm-eval's own index does) or one that lm-eval ships. For a local task the
key covers the text of its YAML and of every file it `include`s, the Python modules its
`!function` tags name, and the digest of each local data file it reads — so editing a
prompt or a data row recomputes exactly the stages that use it. A shipped task is covered
by lm-eval's version. Nothing here imports torch or lm-eval (planning stays fast).

`include_path` may name any folder, but it is read bounded: at most 10,000 entries and 16
folders deep, no link followed (one leading out of the folder is an error), every `*.yaml` a
regular UTF-8 file of at most 1 MiB; a file that cannot be read is an error at its own line.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from neuronspec.fileio import TextFileError, file_sha256, read_small_text

#: `data_files: "{corpus}"` in a task YAML reads the evaluation's corpus, written per language as jsonl.
CORPUS_PLACEHOLDER = "{corpus}"


def lm_eval_version() -> str | None:
    try:
        return metadata.version("lm-eval")
    except metadata.PackageNotFoundError:
        return None


class _Loader(yaml.SafeLoader):
    """lm-eval's YAML dialect without executing anything: `!function mod.fn` stays a string."""


_Loader.add_constructor("!function", lambda loader, node: {"!function": loader.construct_scalar(node)})

#: `include_path` names a folder of task YAMLs; `include_path: /` must fail at once instead of
#: parsing every YAML on the disk. Task files are a page of YAML each, included a few deep.
MAX_ENTRIES = 10_000
MAX_DEPTH = 16
MAX_TASK_BYTES = 1 << 20
MAX_INCLUDES = 32
#: values one task may expand to: aliases can repeat aliases (see spec.loader.MAX_VALUES)
MAX_VALUES = 100_000


def _load(path: Path) -> Any:
    """A task file's YAML: small, regular and UTF-8, else a `TextFileError` at its line and column."""
    text = read_small_text(path, MAX_TASK_BYTES)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise TextFileError(path, "the YAML is nested too deeply to be a task") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise TextFileError(path, f"YAML: {exc.problem or exc}", *((mark.line + 1, mark.column + 1) if mark else (1, 1))) from None
    except yaml.YAMLError as exc:
        raise TextFileError(path, f"YAML: {exc}") from None


def _read(path: Path) -> dict[str, Any]:
    cfg = _load(path)
    if not isinstance(cfg, dict):
        raise TextFileError(path, "a task YAML must be a mapping")
    return cfg


def _functions(node: Any, path: Path) -> list[str]:
    """The `!function` references anywhere in a task config (walked without recursion, bounded:
    PyYAML shares aliased values, so a 1 KB file can hold billions of them)."""
    found, stack, count = [], [node], 0
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise TextFileError(path, f"the task expands to more than {MAX_VALUES:,} values (YAML aliases repeating aliases?)")
        if isinstance(value, dict):
            if set(value) == {"!function"}:
                found.append(str(value["!function"]))
            else:
                stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return sorted(found)


def data_paths(cfg: dict[str, Any]) -> list[str]:
    """The data file entries of a task config (`dataset_kwargs.data_files`, any shape)."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, list):
        return [str(f) for f in files]
    if isinstance(files, dict):
        return [str(f) for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    raise ValueError(f"dataset_kwargs.data_files must be a path, a list or a mapping, got {type(files).__name__}")


@dataclass(frozen=True)
class TaskSource:
    """One task as the plan sees it: its files, its data and what it needs at run time."""

    name: str
    yaml_path: Path | None  # None: a task lm-eval ships
    files: dict[str, str] = field(default_factory=dict)  # YAML chain and !function modules → sha256
    data: dict[str, str] = field(default_factory=dict)  # local data files → sha256
    dataset: str | None = None  # dataset_path[/dataset_name], for messages
    uses_corpus: bool = False  # reads the evaluation's corpus through data_files: "{corpus}"
    output_type: str | None = None  # multiple_choice, loglikelihood, generate_until, … (None: a shipped task)

    def identity(self) -> dict[str, Any]:
        """What the stage key includes; `yaml` is where the stage reads the task from."""
        return {"name": self.name, "yaml": str(self.yaml_path) if self.yaml_path else None, "files": self.files, "data": self.data,
                "dataset": self.dataset, "lm_eval": lm_eval_version()}

    def describe(self) -> str:
        where = f"{self.yaml_path.name}" if self.yaml_path else "shipped with lm-eval"
        data = ("the evaluation's corpus" if self.uses_corpus else
                f"{len(self.data)} local file(s)" if self.data else f"dataset {self.dataset or '?'} (Hugging Face Hub)")
        return f"{self.name} ({where}; {data})"


def task_files(folder: Path) -> list[Path]:
    """Every `*.yaml` under `folder`, sorted, found without following a link: a link whose target
    lies inside the folder is walked there anyway; one that leads out is an error (a task folder
    is self-contained; following links let `include_path` reach the whole disk)."""
    root = folder.resolve()
    found: list[Path] = []
    links: list[Path] = []
    seen = 0
    queue = deque([(root, 0)])  # breadth first: a folder too big fails on its size, not on its deepest corner
    while queue:
        current, depth = queue.popleft()
        with os.scandir(current) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_ENTRIES:
                    raise ValueError(f"{folder} holds more than {MAX_ENTRIES:,} files and folders: point include_path "
                                     "at the folder of the task YAMLs")
                path = Path(entry.path)
                if entry.is_symlink():
                    links.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    if entry.name == "__pycache__":
                        continue
                    if depth + 1 >= MAX_DEPTH:
                        raise TextFileError(path, f"more than {MAX_DEPTH} folders deep inside include_path {folder}")
                    queue.append((path, depth + 1))
                elif entry.name.endswith(".yaml"):
                    found.append(path)
    for link in links:  # after the walk: a folder too big fails on its size first
        try:
            target = link.resolve(strict=True)
        except FileNotFoundError:  # dangling (an editor's lock file): nothing to read
            continue
        except (OSError, RuntimeError) as exc:  # a loop, a permission
            raise TextFileError(link, f"a link that cannot be followed ({exc}); include_path holds task files") from None
        if not target.is_relative_to(root):
            raise TextFileError(link, f"a link to {target}, outside include_path {folder}: copy what it points to into the folder")
    return sorted(found)


def index(folder: Path) -> dict[str, Path]:
    """Task name → YAML file for every task YAML under `folder` (sorted; the first of a name wins).
    A YAML that is not a mapping is not a task (lm-eval skips it too); one that cannot be read
    is an error at its line, not a task silently missing."""
    found: dict[str, Path] = {}
    for path in task_files(folder):
        cfg = _load(path)
        name = cfg.get("task") if isinstance(cfg, dict) else None
        if isinstance(name, str) and name not in found:
            found[name] = path
    return found


def resolve(path: Path, root: Path) -> TaskSource:
    """A local task: merge its `include` chain (as lm-eval does) and digest every file it reads."""
    files: dict[str, str] = {}
    cfg = _merged(path, root, files, seen=())
    for ref in _functions(cfg, path):
        module = path.parent / (ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
        if module.exists():
            if not module.is_file():  # a FIFO would block the digest
                raise TextFileError(module, "not a regular file (a device, FIFO or folder)")
            files[_rel(module, root)] = file_sha256(module)
    data: dict[str, str] = {}
    uses_corpus = False
    for entry in data_paths(cfg):
        if entry == CORPUS_PLACEHOLDER:
            uses_corpus = True
            continue
        local = local_data_path(entry, path)
        if local is None:
            raise ValueError(f"task {cfg.get('task')!r} ({path}): data file {entry!r} does not exist "
                             "(paths are relative to the task YAML)")
        data[_rel(local, root)] = file_sha256(local)
    dataset = cfg.get("dataset_path")
    if dataset and cfg.get("dataset_name"):
        dataset = f"{dataset}/{cfg['dataset_name']}"
    return TaskSource(str(cfg.get("task")), path, files, data, dataset, uses_corpus, cfg.get("output_type"))


def local_data_path(entry: str, task_yaml: Path) -> Path | None:
    """A data_files entry as a local file: absolute, or relative to the task YAML; None if there is none."""
    if "://" in entry:
        return None
    candidate = Path(entry) if Path(entry).is_absolute() else task_yaml.parent / entry
    return candidate.resolve() if candidate.is_file() else None


def _merged(path: Path, root: Path, files: dict[str, str], seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise TextFileError(seen[-1], f"include cycle: {' → '.join(map(str, seen + (path,)))}")
    if len(seen) >= MAX_INCLUDES:
        raise TextFileError(seen[-1], f"more than {MAX_INCLUDES} task files deep in `include`")
    cfg = _read(path)
    files[_rel(path, root)] = file_sha256(path)
    includes = cfg.pop("include", None)
    merged: dict[str, Any] = {}
    for inc in [] if includes is None else includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str) or not inc.strip():
            raise TextFileError(path, f"include must name a task file, got {inc!r}")
        merged.update(_merged(path.parent / inc, root, files, seen + (path,)))
    merged.update(cfg)
    return merged


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def sources(names: list[str], include_path: Path | None) -> dict[str, TaskSource]:
    """Each named task as a local YAML in `include_path`, else as one lm-eval ships (checked when it runs)."""
    local = index(include_path) if include_path is not None else {}
    return {name: resolve(local[name].resolve(), include_path) if name in local and include_path is not None
            else TaskSource(name, None) for name in names}
