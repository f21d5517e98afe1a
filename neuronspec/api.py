"""The notebook path: open a study, plan it, run it, and read its results as pandas DataFrames
and `NeuronSet`s — the same cached stages, progress display and run folders as the command line.

    study = open_study("studies/quickstart.yaml", {"corpora.ppl.docs_per_language": 4})
    results = study.run()
    results.evaluations          # tidy: one row per arm × draw × deactivated × evaluated language
    zh = results.neuron_set("specific", "zh")
    with deactivate(model, zh): ...

pandas (and torch, for neuron sets) are imported only when a result needs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronspec.spec import LoadedStudy, load_study

if TYPE_CHECKING:
    from neuronspec.report.model import Results
    import pandas as pd

    from neuronspec.models.masks import NeuronSet
    from neuronspec.plan.store import Store
    from neuronspec.plan.variants import Variant


def open_study(path: str | Path, overrides: Mapping[str, Any] | None = None, *, store: str | Path | None = None) -> Study:
    """Load and validate a study file; `overrides` are `--set` overrides as a dict
    (`{"detect.plnd.epsilon.quantile": 0.9}`). Raises `StudyError` (every problem, located)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"open_study needs the path of a study file, got {type(path).__name__}")
    sets = [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]  # JSON is YAML
    return Study(load_study(path, sets), store)


@dataclass
class Study:
    """A validated study and its artifact store (default: `.neuronspec/` beside the file)."""

    loaded: LoadedStudy
    store_path: str | Path | None = None
    _variants: list[Variant] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.loaded.study.name

    @property
    def store(self) -> Store:
        from neuronspec.paths import study_store
        from neuronspec.plan.store import Store

        return Store(study_store(self.loaded.path, self.store_path))

    def variants(self) -> list[Variant]:
        """The compiled plan, one per model of the study."""
        if self._variants is None:
            from neuronspec.plan.variants import compile_variants

            self._variants = compile_variants(self.loaded)
        return self._variants

    def plan(self) -> pd.DataFrame:
        """Every stage: id, model (several models), kind, state (cached / stale) and why it is stale."""
        pd = _pandas()

        from neuronspec.plan.runner import explain

        store = self.store
        rows = [{"stage": s.stage.id, "model": v.name, "kind": s.stage.kind, "state": s.state, "why": "; ".join(s.reasons)}
                for v in self.variants() for s in explain(v.plan, store)]
        return pd.DataFrame(rows, columns=["stage", "model", "kind", "state", "why"])

    def run(self, *, force: Sequence[str] = (), only: Sequence[str] = (), quiet: bool = False) -> Results:
        """Run what is stale (the command line's progress display on stderr), write the run folder,
        and return its results. Raises `RunFailed` when a stage fails (finished stages stay cached)."""
        from neuronspec.session import run_study

        done = run_study(self.loaded, self.variants(), self.store, force=force, only=only, quiet=quiet)
        if done is None:
            raise RunFailed(f"study {self.name!r}: a stage failed (reported above); finished stages are cached")
        return Results(done.folder, done.record, done.results, self.store)

    def results(self) -> Results:
        """The newest run of *this* study as loaded (file and overrides): one whose stages have the
        keys this plan has. A run made with other settings (`--set …`, an edited file) is never
        returned in its place, however recent; without a matching run this raises `LookupError`."""
        from neuronspec.report.records import list_runs, read_record
        from neuronspec.session import stage_keys

        store = self.store
        runs = list_runs(store.root, self.name)
        if not runs:
            raise LookupError(f"study {self.name!r} has no runs in {store.root}: call .run() first")
        keys = stage_keys(self.variants())
        for entry in runs:
            folder = store.root / "runs" / entry["run_id"]
            try:
                record = read_record(folder)
            except ValueError:
                continue
            if {sid: s.get("key") for sid, s in record.get("stages", {}).items()} == keys:
                return Results.from_folder(folder, store)
        raise LookupError(f"study {self.name!r}: none of its {len(runs)} runs in {store.root} was made with these "
                          f"settings (the newest, {runs[0]['run_id']}, differs in some stage): call .run()")


class RunFailed(RuntimeError):
    """A stage of `Study.run` failed."""


@dataclass
class Results:
    """One run's results: its folder, record, the collected numbers, and the store that holds its sets."""

    folder: Path
    record: dict[str, Any]  # record.json: resolved study, every stage's key and spec, versions, git state
    data: Results  # what the report shows (results.json)
    store: Store

    @classmethod
    def from_folder(cls, folder: str | Path, store: Store | None = None) -> Results:
        """A past run from its folder (`.neuronspec/runs/RUN_ID`); its store is the folder's grandparent."""
        from neuronspec.plan.store import Store
        from neuronspec.report.records import load_results, read_record

        folder = Path(folder)
        record = read_record(folder)
        return cls(folder, record, load_results(folder, record), store or Store(folder.parent.parent))

    @property
    def evaluations(self) -> pd.DataFrame:
        """Tidy: one row per (model,) evaluation × arm × random draw × deactivated language × evaluated
        language, with the value, its CI, the base value, the change and its paired CI."""
        pd = _pandas()

        from neuronspec.report.tidy import EvaluationRow, evaluation_rows

        return _frame(pd, evaluation_rows(self.data), EvaluationRow)

    @property
    def layer_counts(self) -> pd.DataFrame:
        """Tidy: neurons per (model,) set × language × site × layer."""
        pd = _pandas()

        from neuronspec.report.tidy import LayerRow, layer_rows

        return _frame(pd, layer_rows(self.data), LayerRow)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table of the report, as shown (formatted cells), by title."""
        pd = _pandas()

        from neuronspec.report.render import result_tables

        return {t.title: pd.DataFrame(t.rows, columns=t.columns) for t in result_tables(self.data)}

    def neuron_set(self, name: str, language: str | None = None, *, model: str | None = None) -> NeuronSet:
        """A named set (or a detector's, e.g. `plnd`) for `language`; `model` in a study with `models`."""
        from neuronspec.plan import ids

        return self._load(self._stage(ids.SETS, model), name, language)

    def mask(self, arm: str, language: str | None = None, *, draw: int | None = None, model: str | None = None) -> NeuronSet:
        """The neurons an arm switched off for `language` (of one `draw`, for a random control with several)."""
        from neuronspec.plan import ids

        from neuronspec.plan.kinds import artifacts

        return self._load(self._stage(ids.mask(arm, draw), model), artifacts.MASK, language)

    def _stage(self, sid: str, model: str | None) -> str:
        stages = self.record.get("stages", {})
        from neuronspec.plan import ids

        full = ids.qualified(model, sid)
        if full not in stages:
            hint = "; name the model with model=" if self.record.get("models") and not model else ""
            raise KeyError(f"run {self.record.get('run_id')} has no stage {full!r}{hint}")
        return stages[full]["key"]

    def _load(self, key: str, name: str, language: str | None) -> NeuronSet:
        from neuronspec.models.masks import NeuronSet

        entry = self.store.get(key)
        from neuronspec.plan.kinds import artifacts

        path = entry.file(artifacts.set_file(name, language))
        if not path.exists():
            raise KeyError(f"no neuron set {name!r}" + (f" for {language!r}" if language else "") + f" in {entry.path}")
        return NeuronSet.load(path)


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("neuronspec's DataFrames need pandas: pip install 'neuronspec[api]'") from exc
    return pandas


def _frame(pd: Any, rows: list[Any], row_type: type) -> pd.DataFrame:
    from dataclasses import asdict, fields

    frame = pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(row_type)])
    for f in fields(row_type):  # integers that may be missing (a draw, a document count) stay integers
        if "int" in str(f.type) and "None" in str(f.type):
            frame[f.name] = frame[f.name].astype("Int64")
    return frame
