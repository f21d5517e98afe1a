"""Where an lm-evaluation-harness task comes from, and what its cache key must cover.

A task named in a study is either a YAML in the evaluation's `include_path` (found by its
`task:` name, as lm-eval's own index does) or one that lm-eval ships. For a local task the
key covers the text of its YAML and of every file it `include`s, the Python modules its
`!function` tags name, and the digest of each local data file it reads — so editing a
prompt or a data row recomputes exactly the stages that use it. A shipped task is covered
by lm-eval's version. Nothing here imports torch or lm-eval (planning stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from neuronspec.fileio import file_sha256

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


def _read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        cfg = yaml.load(fh, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a task YAML must be a mapping")
    return cfg


def _functions(node: Any) -> list[str]:
    if isinstance(node, dict):
        if set(node) == {"!function"}:
            return [str(node["!function"])]
        return [f for v in node.values() for f in _functions(v)]
    if isinstance(node, list):
        return [f for v in node for f in _functions(v)]
    return []


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


def index(folder: Path) -> dict[str, Path]:
    """Task name → YAML file for every task YAML under `folder` (sorted; the first of a name wins)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("**/*.yaml")):
        if "__pycache__" in path.parts:
            continue
        try:
            cfg = _read(path)
        except (yaml.YAMLError, ValueError, UnicodeDecodeError):
            continue  # not a task file (lm-eval skips these too)
        name = cfg.get("task")
        if isinstance(name, str) and name not in found:
            found[name] = path
    return found


def resolve(path: Path, root: Path) -> TaskSource:
    """A local task: merge its `include` chain (as lm-eval does) and digest every file it reads."""
    files: dict[str, str] = {}
    cfg = _merged(path, root, files, seen=set())
    for ref in _functions(cfg):
        module = path.parent / (ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
        if module.exists():
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


def _merged(path: Path, root: Path, files: dict[str, str], seen: set[Path]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"{path}: include cycle")
    seen.add(path)
    files[_rel(path, root)] = file_sha256(path)
    cfg = _read(path)
    includes = cfg.pop("include", None)
    merged: dict[str, Any] = {}
    for inc in [] if includes is None else includes if isinstance(includes, list) else [includes]:
        merged.update(_merged(path.parent / inc if not Path(inc).is_absolute() else Path(inc), root, files, seen))
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
