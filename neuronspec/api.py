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

    def __repr__(self) -> str:
        return f"Study(name={self.name!r}, file={str(self.loaded.path) if self.loaded.path else None!r})"

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

    def run(self, *, force: Sequence[str] = (), only: Sequence[str] = (), quiet: bool = False, note: str | None = None) -> Results:
        """Run what is stale (the command line's progress display on stderr), write the run folder,
        and return its results. `note` is kept in the run record (`neuronspec runs` lists it).
        Raises `RunFailed` when a stage fails (finished stages stay cached)."""
        from neuronspec.session import run_study

        done = run_study(self.loaded, self.variants(), self.store, force=force, only=only, quiet=quiet, note=note)
        if done is None:
            raise RunFailed(f"study {self.name!r}: a stage failed (reported above); finished stages are cached")
        return Results(done.folder, done.record, done.results, self.store)

    def results(self) -> Results:
        """The newest run of *this* study as loaded (file and overrides): one whose stages have the
        keys this plan has. A run made with other settings (`--set …`, an edited file) is never
        returned in its place, however recent; without a matching run this raises `LookupError`
        naming the newest run and what differs in it."""
        from neuronspec.session import matching_run

        store = self.store
        match = matching_run(self.loaded, self.variants(), store)
        if match.folder is None:
            raise LookupError(match.explain(self.name, store.root) + ": call .run()")
        return Results.from_folder(match.folder, store)


class RunFailed(RuntimeError):
    """A stage of `Study.run` failed."""


@dataclass
class Results:
    """One run's results: its folder, record, the collected numbers, and the store that holds its sets."""

    folder: Path
    record: dict[str, Any]  # record.json: resolved study, every stage's key and spec, versions, git state
    data: Results  # what the report shows (results.json)
    store: Store

    def __repr__(self) -> str:  # the record and results are megabytes: say which run, and what it holds
        evaluations = ", ".join(getattr(self.data, "evaluations", {}) or {}) or "none"
        return f"Results(run={self.folder.name!r}, evaluations=[{evaluations}], folder={str(self.folder)!r})"

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
    def stability(self) -> pd.DataFrame:
        """Tidy: per (model,) set × language, the sizes of the sets found on each half of the detection
        documents and their Jaccard overlap (sets whose stability the study measured)."""
        pd = _pandas()

        from neuronspec.report.tidy import StabilityRow, stability_rows

        return _frame(pd, stability_rows(self.data), StabilityRow)

    @property
    def expert_counts(self) -> pd.DataFrame:
        """Tidy: a mixture-of-experts model's ffn neurons per (model,) set × language × layer × expert (empty otherwise)."""
        pd = _pandas()

        from neuronspec.report.tidy import ExpertRow, expert_rows

        return _frame(pd, expert_rows(self.data), ExpertRow)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table of the report, as shown (formatted cells), by title."""
        pd = _pandas()

        from neuronspec.report.render import result_tables

        return {t.title: pd.DataFrame(t.rows, columns=t.columns) for t in result_tables(self.data)}

    def statistics(self, method: str, language: str, *, model: str | None = None) -> pd.DataFrame:
        """Per neuron (site, layer, neuron), what detector `method` selected from for `language`: PLND's
        importance over documents (min, mean, sum, sumsq, topk_hits), or the activation pass's counts
        (LAPE, LinguaFranca, Sharing: tokens, gate_active, active_above_τ)."""
        pd = _pandas()

        from neuronspec.report.raw import statistics

        return pd.DataFrame(statistics(self.record, self.store, method, language, model).data)

    def activations(self, method: str, language: str, pooling: str = "mean", *, model: str | None = None) -> pd.DataFrame:
        """Per document (rows, by id), the ffn activations an activation pass pooled (`mean`, `mean_abs`,
        `last`, as the methods asked for): columns (layer, neuron)."""
        pd = _pandas()

        from neuronspec.report.raw import pooled

        p = pooled(self.record, self.store, method, language, pooling, model)
        columns = pd.MultiIndex.from_product([range(p.layers), range(p.width)], names=["layer", "neuron"])
        return pd.DataFrame(p.values, index=pd.Index(p.documents, name="document"), columns=columns)

    def documents(self, evaluation: str, *, model: str | None = None) -> pd.DataFrame:
        """Per document of every cell of a perplexity `evaluation` (arm, draw, deactivated, evaluated
        language, document id): its summed NLL and predicted tokens — what the CIs resample."""
        pd = _pandas()

        from neuronspec.report.raw import evaluation_documents

        frame = pd.DataFrame(evaluation_documents(self.record, self.store, evaluation, model).data)
        return frame.astype({"draw": "Int64", "nll": "float64", "tokens": "int64"})

    def neuron_set(self, name: str, language: str | None = None, *, model: str | None = None) -> NeuronSet:
        """A named set (or a detector's, e.g. `plnd`) for `language`; `model` in a study with `models`."""
        from neuronspec.plan import ids

        return self._load(self._stage(ids.SETS, model), name, language, "neuron set")

    def mask(self, arm: str, language: str | None = None, *, draw: int | None = None, model: str | None = None) -> NeuronSet:
        """The neurons an arm switched off for `language` (of one `draw`, for a random control with several)."""
        from neuronspec.plan import ids
        from neuronspec.plan.kinds import artifacts

        stages = self.record.get("stages", {})
        masked = sorted({s.get("arm") for s in stages.values() if s.get("kind") == "mask" and s.get("arm")})
        if arm not in masked:  # the record says which stage masks which arm: no id is parsed
            raise KeyError(f"run {self.record.get('run_id')} has no arm {arm!r} (arms with masks: {', '.join(masked) or 'none'})")
        draws: list[int] = []  # a random control's draws are 1…D, each its own mask stage
        while ids.qualified(model, ids.mask(arm, len(draws) + 1)) in stages:
            draws.append(len(draws) + 1)
        if draw is None and draws:
            raise KeyError(f"arm {arm!r} is a random control with {len(draws)} draws: pick one with draw= "
                           f"({draws[0]}…{draws[-1]})")
        if draw is not None and not draws:
            raise KeyError(f"arm {arm!r} has no draws (only random controls do): leave out draw=")
        if draw is not None and draw not in draws:
            raise KeyError(f"arm {arm!r} has draws {draws[0]}…{draws[-1]}, not {draw}")
        return self._load(self._stage(ids.mask(arm, draw), model), artifacts.MASK, language, f"mask of arm {arm!r}")

    def neuron_table(self, neurons: NeuronSet, *, model: str | None = None) -> pd.DataFrame:
        """Tidy: one row per neuron of `neurons` (a `neuron_set` or `mask` of this run): site, layer, flat index,
        and for a mixture-of-experts ffn the expert and the index inside it."""
        pd = _pandas()

        from neuronspec.report.model import by_model
        from neuronspec.report.neurons import NeuronRow, layout_of, neuron_rows

        runs = dict(by_model(self.data))
        if model not in runs:
            raise KeyError(f"no model {model!r} in this run (models: {', '.join(str(m) for m in runs)})")
        return _frame(pd, neuron_rows(neurons, layout_of(runs[model].dims)), NeuronRow)

    def _stage(self, sid: str, model: str | None) -> str:
        stages = self.record.get("stages", {})
        from neuronspec.plan import ids

        full = ids.qualified(model, sid)
        if full not in stages:
            models = self.record.get("models") or {}
            if models and not model:
                raise KeyError(f"run {self.record.get('run_id')} has several models: name one with model= "
                               f"({', '.join(models)})")
            if model and models and model not in models:
                raise KeyError(f"run {self.record.get('run_id')} has no model {model!r} (it has: {', '.join(models)})")
            raise KeyError(f"run {self.record.get('run_id')} has no stage {full!r}")
        return stages[full]["key"]

    def _load(self, key: str, name: str, language: str | None, what: str) -> NeuronSet:
        from neuronspec.models.masks import NeuronSet

        from neuronspec.plan.kinds import artifacts

        entry = self.store.get(key)
        path = entry.file(artifacts.set_file(name, language))
        if not path.exists():
            raise KeyError(_missing_file(entry.path, name, language, what))
        return NeuronSet.load(path)


def _missing_file(folder: Path, name: str, language: str | None, what: str) -> str:
    """What a set or mask lookup could have asked for instead, from the stage's own files (NAME.LANG.safetensors)."""
    files = [p.name.removesuffix(".safetensors").split(".", 1) for p in folder.glob("*.safetensors")]
    names = sorted({f[0] for f in files})
    langs = sorted(f[1] for f in files if f[0] == name and len(f) == 2)
    asked = f"no {what}" + (f" {name!r}" if what == "neuron set" else "") + (f" for {language!r}" if language else "")
    if what == "neuron set" and name not in names:
        return f"{asked} in this run (sets: {', '.join(names) or 'none'})"
    if langs:
        return f"{asked} (languages: {', '.join(langs)})"
    return f"{asked}: it is one for all languages, leave out the language"


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
