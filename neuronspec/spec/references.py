"""Cross-reference checks that Pydantic's per-field validation cannot see.

Each check returns `(field path, message)` pairs; the loader turns the path into
`FILE:LINE:COL`. Checks that need the model (layer counts) run at plan time.
"""

from __future__ import annotations

import heapq
from typing import Iterator

from neuronspec.spec.models import ArmSpec, NeuronSelection, NeuronsFile, Study
from neuronspec.spec.setexpr import SELECTORS, SetExprError, parse, refs, uses_template

Issue = tuple[tuple[str | int, ...], str]


def detectors(study: Study) -> list[str]:
    """Names of the enabled detection methods; each is a family of per-language sets."""
    return [name for name, spec in study.detect if spec is not None]


def single_sets(study: Study) -> list[str]:
    """Detector outputs that are one set for the whole study, not one per language."""
    return ["sharing.all_shared"] if study.detect.sharing is not None else []


def expressions(study: Study) -> dict[str, str]:
    """The named sets defined by set algebra (the others are read from files)."""
    return {name: v for name, v in study.neurons.items() if isinstance(v, str)}


def imported_sets(study: Study) -> dict[str, NeuronsFile]:
    """The named sets read from files (`neurons: {NAME: {file: PATH}}`)."""
    return {name: v for name, v in study.neurons.items() if isinstance(v, NeuronsFile)}


def set_order(study: Study) -> tuple[list[str], set[str]]:
    """Named sets in dependency order, and which of them are families. Assumes checks passed.

    Kahn's algorithm, always taking the earliest ready set in study order (each expression
    parsed once: linear in the number of sets). Sets that refer to unknown names or sit on a
    cycle are left out (the checks report them).
    """
    families = set(detectors(study)) | {name for name, f in imported_sets(study).items() if f.family}
    resolved = families | set(single_sets(study)) | set(imported_sets(study))
    names = list(expressions(study))
    index = {name: i for i, name in enumerate(names)}
    trees = {name: parse(text) for name, text in expressions(study).items()}
    waiting: dict[str, int] = {}
    users: dict[str, list[str]] = {}
    for name, tree in trees.items():
        deps = {r.name for r in refs(tree)} - resolved
        known = {d for d in deps if d in index}
        waiting[name] = len(known) + (1 if len(known) < len(deps) else 0)  # an unknown name never resolves
        for dep in known:
            users.setdefault(dep, []).append(name)
    ready = [index[n] for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    done: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        if uses_template(trees[name], families):
            families.add(name)
        done.append(name)
        for user in users.get(name, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, index[user])
    return done, families


def match_corpus(study: Study, selection: NeuronSelection) -> str | None:
    """The corpus whose mean |activation| ranks the neurons of a `match: magnitude` control
    (its `match_corpus`, else detect.sharing's corpus); None for a control matched by count."""
    if selection.match != "magnitude":
        return None
    sharing = study.detect.sharing
    return selection.match_corpus or (sharing.corpus if sharing is not None else None)


def check_references(study: Study) -> list[Issue]:
    return list(_models(study)) + list(_corpora(study)) + list(_sets(study)) + list(_arms(study)) + list(_report(study))


def _models(study: Study) -> Iterator[Issue]:
    if study.models and "model" in study.model_fields_set:
        yield ("model",), (f"give either `model` (one model) or `models` (several, by name: {', '.join(study.models)}), "
                           "not both; move this model into `models` under a name")


def _corpora(study: Study) -> Iterator[Issue]:
    for name, corpus in study.corpora.items():
        for i, code in enumerate(corpus.languages or []):
            if code not in study.languages:
                yield ("corpora", name, "languages", i), f"{code!r} is not one of the study's languages {study.languages}"
        yield from _lang_codes(name, corpus.options.get("lang_codes"), corpus.languages or study.languages)
    for method, spec in study.detect:
        if spec is not None and spec.corpus not in study.corpora:
            yield ("detect", method, "corpus"), _missing("corpus", spec.corpus, study.corpora)
    if study.analyses.logit_lens is not None and study.analyses.logit_lens.corpus not in study.corpora:
        yield ("analyses", "logit_lens", "corpus"), _missing("corpus", study.analyses.logit_lens.corpus, study.corpora)
    plnd = study.detect.plnd
    if plnd is not None and isinstance(plnd.epsilon, dict):
        for site in plnd.site_list():
            if site not in plnd.epsilon:
                yield ("detect", "plnd", "epsilon"), f"no ε for site {site!r} (give one per site in `sites`, or a single ε)"
    arm_names = [a.name for a in study.arms]
    for name, ev in study.evaluate.items():
        if ev.corpus is not None and ev.corpus not in study.corpora:
            yield ("evaluate", name, "corpus"), _missing("corpus", ev.corpus, study.corpora)
        if isinstance(getattr(ev, "tasks", None), dict):  # lm_eval: a task per study language
            for lang in ev.tasks:
                if lang not in study.languages:
                    yield ("evaluate", name, "tasks", lang), f"{lang!r} is not one of the study's languages {study.languages}"
        for i, arm in enumerate(ev.arms or []):
            if arm not in arm_names:
                yield ("evaluate", name, "arms", i), _missing("arm", arm, arm_names)
        if ev.draws is not None:
            most = max((a.selection.draw_count(a.kind) for a in study.arms if a.selection.random_like is not None
                        and (ev.arms is None or a.name in ev.arms)), default=0)
            if ev.draws > most:
                yield ("evaluate", name, "draws"), (f"{ev.draws} draws, but the random controls evaluated here have "
                                                    f"{most} at most" if most else "no random control is evaluated here")


def _lang_codes(corpus: str, codes: object, languages: list[str]) -> Iterator[Issue]:
    """`lang_codes` maps each language to its own code in the data: two languages read from one
    code (`{en: eng, fr: eng}`, or `{en: fr}` beside fr) would be the same documents under two names."""
    if codes is None:
        return
    loc = ("corpora", corpus, "options", "lang_codes")
    if not isinstance(codes, dict) or not all(isinstance(v, str) and v for v in codes.values()):
        yield loc, "lang_codes maps a language to the code its data uses, e.g. {zh: zho_Hans}"
        return
    readers: dict[str, list[str]] = {}
    for lang in languages:
        readers.setdefault(codes.get(lang, lang), []).append(lang)
    for data_code, langs in readers.items():
        if len(langs) > 1:
            yield loc, f"{' and '.join(langs)} would both read the data's {data_code!r}: give each language its own code"


def _sets(study: Study) -> Iterator[Issue]:
    known = set(detectors(study)) | set(single_sets(study)) | set(study.neurons)
    graph: dict[str, set[str]] = {}
    for name in imported_sets(study):
        if name in detectors(study):
            yield ("neurons", name), f"{name!r} is already the name of a detector"
    exprs = expressions(study)
    for name, text in exprs.items():
        loc = ("neurons", name)
        if name in detectors(study):
            yield loc, f"{name!r} is already the name of a detector"
        try:
            tree = parse(text)
        except SetExprError as exc:
            yield loc, str(exc)
            continue
        graph[name] = set()
        for ref in refs(tree):
            if ref.name not in known:
                yield loc, _missing("neuron set or detector", ref.name, known)
            elif ref.name in exprs:
                graph[name].add(ref.name)
            sel = ref.selector
            if sel is not None and sel not in SELECTORS and sel not in study.languages:
                yield loc, f"[{sel}] is neither a selector ({', '.join(SELECTORS)}) nor one of the study's languages"
    if len(graph) < len(exprs):  # a syntax error above: the order cannot be computed
        return
    if _has_cycle(graph):
        yield ("neurons",), "neuron sets refer to each other in a cycle"
        return
    order, families = set_order(study)
    for name in order:
        for ref in refs(parse(exprs[name])):
            if ref.name in families and ref.selector is None:
                yield ("neurons", name), f"{ref.name!r} has one set per language: pick one with [lang], [all], [any], [others] or [xx]"
            if ref.name not in families and ref.name in study.neurons and ref.selector is not None:
                yield ("neurons", name), f"{ref.name!r} is a single set; it takes no [{ref.selector}]"


def _has_cycle(graph: dict[str, set[str]]) -> bool:
    """Depth-first search with an explicit stack (a chain of 20,000 sets must not recurse)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in graph:
        if root in state:
            continue
        stack = [(root, iter(sorted(graph.get(root, ()))))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                return True
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return False


def _arms(study: Study) -> Iterator[Issue]:
    names = [a.name for a in study.arms]
    known_sets = set(detectors(study)) | set(single_sets(study)) | set(study.neurons)
    for i, arm in enumerate(study.arms):
        loc = ("arms", i)
        kind = arm.kind
        sel = arm.selection
        if names.count(arm.name) > 1:
            yield loc + ("name",), f"arm name {arm.name!r} is used more than once"
        if (sel.neurons is None) == (sel.random_like is None):
            yield loc + (kind,), "give exactly one of `neurons` (a set) or `random_like` (another arm)"
        if sel.neurons is not None and sel.neurons not in known_sets:
            yield loc + (kind, "neurons"), _missing("neuron set", sel.neurons, known_sets)
        for part in sel.partition_names():
            if part not in study.partitions:
                yield loc + (kind, "layers"), _missing("partition", part, study.partitions)
        if sel.random_like is not None:
            target = study.arm(sel.random_like)
            if target is None:
                yield loc + (kind, "random_like"), _missing("arm", sel.random_like, names)
            elif target.kind != kind:
                yield loc + (kind, "random_like"), f"arm {sel.random_like!r} is a {target.kind} arm; match an arm of the same kind"
            elif target.selection.random_like is not None:
                yield loc + (kind, "random_like"), f"arm {sel.random_like!r} is itself random; match a neuron-set arm"
            elif kind == "deactivate" and _ablation(target) != _ablation(arm):
                yield loc + (kind, "ablation"), (f"arm {sel.random_like!r} ablates by {_ablation(target)}; its random control "
                                                 f"must too (it ablates by {_ablation(arm)})")
            if sel.sites is not None or (sel.layers is not None and sel.scope != "partition"):
                yield loc + (kind,), "random_like copies the matched arm's layers and sites; drop `layers`/`sites`"
            if sel.scope == "partition" and sel.layers is None:
                yield loc + (kind, "scope"), "scope: partition draws from the partition(s) named in `layers`: name them"
            if sel.count is not None:
                yield loc + (kind, "count"), "count subsamples a named set; a random control copies its arm's count"
            if sel.match == "magnitude":
                if sel.scope != "layer":
                    yield loc + (kind, "match"), "match: magnitude bins each layer's neurons: it needs scope: layer"
                corpus = match_corpus(study, sel)
                if corpus is None:
                    yield loc + (kind, "match_corpus"), "match: magnitude needs `match_corpus` (no detect.sharing corpus to default to)"
                elif corpus not in study.corpora:
                    yield loc + (kind, "match_corpus"), _missing("corpus", corpus, study.corpora)
            if kind == "enhance" and (sel.draws or 1) > 1:
                yield loc + (kind, "draws"), "several draws are supported for deactivate arms only (each enhance draw is a fine-tune)"
        else:
            if sel.draws is not None:
                yield loc + (kind, "draws"), "draws count the random draws of a `random_like` control; this arm names a set"
            if sel.scope != "layer":
                yield loc + (kind, "scope"), "scope says where a `random_like` control draws from; this arm names a set"
            if sel.match != "count" or sel.match_corpus is not None:
                yield loc + (kind, "match"), "match says what a `random_like` control matches; this arm names a set"
        if arm.deactivate is not None and arm.deactivate.mean_corpus is not None and arm.deactivate.mean_corpus not in study.corpora:
            yield loc + ("deactivate", "mean_corpus"), _missing("corpus", arm.deactivate.mean_corpus, study.corpora)
        if arm.enhance is not None:
            if arm.enhance.corpus not in study.corpora:
                yield loc + ("enhance", "corpus"), _missing("corpus", arm.enhance.corpus, study.corpora)
            for j, code in enumerate(arm.enhance.languages or []):
                if code not in study.languages:
                    yield loc + ("enhance", "languages", j), f"{code!r} is not one of the study's languages {study.languages}"


def _ablation(arm: ArmSpec) -> str:
    """How a deactivate arm switches its neurons off: `zero`, or `mean over CORPUS`."""
    d = arm.deactivate
    return "zero" if d is None or d.ablation == "zero" else f"mean over {d.mean_corpus!r}"


def _report(study: Study) -> Iterator[Issue]:
    if study.arms and study.report.baseline_language not in study.languages:
        yield ("report", "baseline_language"), (
            f"{study.report.baseline_language!r} is not one of the study's languages; ΔEng/Δn-Eng need it (set report.baseline_language)"
        )


def _missing(kind: str, name: str, known: object) -> str:
    options = ", ".join(sorted(known)) if known else "none defined"  # type: ignore[arg-type]
    return f"no {kind} named {name!r} (defined: {options})"
