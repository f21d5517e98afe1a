"""Compile a validated study into a plan of stages.

    corpus/NAME                      materialise + sample documents          (no model)
    stats/plnd/LANG                  one forward pass over LANG's documents  (model)
    select/plnd                      thresholds ε → relevant sets per language  (cheap)
    stats/act/CORPUS/LANG            one activation pass, shared by LAPE, LinguaFranca, Sharing  (model)
    select/lape|linguafranca|sharing their neuron sets and analyses          (cheap)
    attr/sharing/LANG                attribution of the output to ffn neurons, first items  (model)
    analysis/logit_lens/LANG         per-layer language of the top tokens      (model)
    means/CORPUS                     activation means over a corpus (mean-ablation arms)  (model)
    sets                             named sets by set algebra                  (cheap)
    mask/ARM                         an arm's neurons per language              (cheap)
    mask/ARM/drawK                   draw K of a random control with several draws  (cheap)
    enhance/ARM/LANG                 fine-tune only ARM's neurons on LANG text → a delta  (model)
    eval/EVAL/base/LANG              the untouched model
    eval/EVAL/ARM/MASKLANG@LANG      the model with ARM's MASKLANG set deactivated (or its delta applied), on LANG
    eval/EVAL/ARM/drawK/MASKLANG@LANG  the same for draw K of a random control

Statistics are separate from selection so that changing ε, the set algebra, a partition
or an arm re-runs no forward pass. A stage that reads one language of an input (its documents
of a corpus, its neurons of a mask) declares it in `Stage.reads`: its content key
(neuronspec.plan.content) then covers those files only, so appending a document of one
language recomputes the corpus (no model) but reuses every other language's statistics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from neuronspec.data import CorpusError, corpus_identity
from neuronspec.fileio import TextFileError
from neuronspec.plan import ids
from neuronspec.plan import kinds as K
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.identity import model_dims, model_identity
from neuronspec.spec.detection import SHARING_EVENTS
from neuronspec.spec.errors import Location, Problem, StudyError
from neuronspec.spec.loader import LoadedStudy
from neuronspec.spec.models import LmEvalSpec, Quantile, Study, expand_sites
from neuronspec.spec.fields import Batching
from neuronspec.spec.references import detectors, expressions, imported_sets, match_corpus, set_order, single_sets

#: fields that change how documents are batched, not what is computed: not in selection keys
BATCHING = {"batch_size", "batch_tokens"}
#: documents per forward pass of a means stage (packed, so a batch costs about batch_size × max_tokens)
MEANS_BATCH = 8


def compile_study(loaded: LoadedStudy) -> Plan:
    study = loaded.study
    if study.models:  # never fall back to the default `model` of a multi-model study
        raise StudyError([loaded.source.problem(("models",), "a study with `models` compiles to one plan per model "
                                                "(neuronspec.plan.variants.compile_variants)")])
    identity, dims = _model(loaded)
    _check_partitions(loaded, dims["num_layers"])
    _check_attribution_layers(loaded, dims["num_layers"])
    _check_top_k(loaded, dims)
    plan = Plan(study.name, identity, dims, code=K.code_fingerprints(), specs=K.spec_types())

    for name in _used_corpora(study):
        c = study.corpora[name]
        spec = K.CorpusStage(source=c.source, split=c.split, docs_per_language=c.docs_per_language,
                             eval_fraction=c.eval_fraction, languages=c.languages or study.languages, options=c.options,
                             seed=study.seed, identity=_corpus_identity(loaded, name))
        plan.add(Stage(ids.corpus(name), "corpus", spec, origin=("corpora", name)))

    if study.detect.plnd is not None:
        _add_plnd(plan, study)
    _add_activation_methods(plan, study)
    detector_stages = [ids.select(d) for d in detectors(study)]
    if detector_stages or study.neurons:
        order, families = set_order(study)
        exprs = expressions(study)
        singles = single_sets(study)
        halves = ["plnd"] if study.detect.plnd is not None and study.detect.plnd.stability.halves else []
        # the detectors' neuron sets (and their halves' for split-half stability), not their result.json:
        # thresholds differ where sets do not
        reads = {ids.select(d): tuple(artifacts.set_file(d, lang) for lang in study.languages)
                 + tuple(artifacts.set_file(s) for s in singles if s.split(".", 1)[0] == d)
                 + (tuple(artifacts.half_set_file(d, h, lang) for h in (0, 1)  # methods.stability.HALVES
                          for lang in study.languages) if d in halves else ())
                 for d in detectors(study)}
        plan.add(Stage(ids.SETS, "sets", K.Sets(
            neurons={n: exprs[n] for n in order}, order=order, families=sorted(families),
            detectors=detectors(study), singles=singles, languages=study.languages, halves=halves,
            imports=_imports(loaded, dims),
        ), deps=tuple(detector_stages), origin=("neurons",), reads=reads))
    if study.model.dtype != "float32" and any(arm.enhance is not None for arm in study.arms):
        plan.notes.append(f"enhance arms with model.dtype {study.model.dtype}: the trained neurons are written into "
                          f"{study.model.dtype} weights, where updates below its resolution (about 0.4 % of a weight "
                          "for bfloat16) vanish; use dtype: float32 for enhancement")
    for corpus_name in dict.fromkeys(c for c in (mean_corpus(a) for a in study.arms) if c is not None):
        corpus = study.corpora[corpus_name]
        plan.add(Stage(ids.means(corpus_name), "means", K.ActMeans(
            batch_size=MEANS_BATCH, corpus=corpus_name, languages=corpus.languages or study.languages,
            max_tokens=corpus.max_tokens), deps=(ids.corpus(corpus_name),), model_bound=True, origin=("corpora", corpus_name)))
    for i, arm in enumerate(study.arms):
        _add_mask(plan, study, i)
        if arm.enhance is not None:
            _add_enhance(plan, study, i)
    for name, ev in study.evaluate.items():
        if isinstance(ev, LmEvalSpec):
            _add_lm_evals(plan, loaded, name)
        else:
            _add_evals(plan, study, name)
    return plan


def _docs(corpus_name: str, lang: str) -> dict[str, tuple[str, ...]]:
    """`reads` of a stage that reads one language's documents of a corpus."""
    return {ids.corpus(corpus_name): (artifacts.docs_file(lang),)}


def _model(loaded: LoadedStudy) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's identity and dims (no weights loaded), or a located error: a folder that
    does not exist, a hub id that cannot be resolved, a config that cannot be read."""
    m = loaded.study.model
    where = ("model", "id")  # compile_variants relocates it to `models.NAME.id` for a multi-model study
    local = m.id.startswith(("/", "./", "../", "~")) and not Path(m.id).expanduser().exists()
    if local:
        raise StudyError([loaded.source.problem(where, f"model folder or file {m.id} does not exist")])
    try:
        identity = model_identity(m)
        return identity, model_dims(m, identity)
    except RuntimeError as exc:  # the hub id cannot be resolved (its message names the model)
        raise StudyError([loaded.source.problem(where, str(exc))]) from None
    except (OSError, ValueError) as exc:
        raise StudyError([loaded.source.problem(where, f"model {m.id!r}: {type(exc).__name__}: {exc}")]) from None


def _corpus_identity(loaded: LoadedStudy, name: str) -> dict[str, Any]:
    """What a corpus's cache key needs, or a located error for a source that cannot provide text
    (an unknown builtin, a folder, a missing file) — found by `validate`, not by `run`."""
    c = loaded.study.corpora[name]
    where = ("corpora", name, "source")
    try:
        identity = corpus_identity(c.source, c.options)
    except CorpusError as exc:
        raise StudyError([loaded.source.problem(where, str(exc))]) from None
    if not c.source.startswith(("builtin:", "hf:")) and not identity.get("sha256"):
        raise StudyError([loaded.source.problem(where, f"no corpus file at {c.source}")])
    return identity


def _imports(loaded: LoadedStudy, dims: dict[str, Any]) -> dict[str, K.ImportedSet]:
    """Each set read from a file, checked against the model's dims now (an error names the file and
    field, located at the study's `file:`), keyed by its files' digests."""
    from neuronspec.setfiles import SetFileError, read_set_file

    out = {}
    for name, spec in imported_sets(loaded.study).items():
        langs: list[str | None] = list(loaded.study.languages) if spec.family else [None]
        files = {}
        for lang in langs:
            try:
                found = read_set_file(spec.path(lang), dims)
            except SetFileError as exc:
                raise StudyError([loaded.source.problem(("neurons", name, "file"), str(exc))]) from None
            files[lang or "*"] = K.SetFileRef(path=spec.path(lang), sha256=found.sha256)
        out[name] = K.ImportedSet(family=spec.family, files=files)
    return out


def _used_corpora(study: Study) -> list[str]:
    used = [spec.corpus for _, spec in study.detect if spec is not None]
    if study.analyses.logit_lens is not None:
        used.append(study.analyses.logit_lens.corpus)
    used += [arm.enhance.corpus for arm in study.arms if arm.enhance is not None]
    used += [c for arm in study.arms if (c := match_corpus(study, arm.selection)) is not None]
    used += [c for c in (mean_corpus(arm) for arm in study.arms) if c is not None]
    used += [ev.corpus for ev in study.evaluate.values() if ev.corpus is not None]
    return list(dict.fromkeys(used))


def _check_partitions(loaded: LoadedStudy, num_layers: int) -> None:
    problems = []
    for name, (start, end) in loaded.study.partitions.items():
        if end > num_layers:
            problems.append(loaded.source.problem(
                ("partitions", name), f"layer range [{start}, {end}) ends past the model's {num_layers} layers (valid: 0..{num_layers})"))
    if problems:
        raise StudyError(problems)


def _check_attribution_layers(loaded: LoadedStudy, num_layers: int) -> None:
    sharing = loaded.study.detect.sharing
    attribution = sharing.attribution if sharing is not None else None
    bad = [l for l in (attribution.layers or []) if l >= num_layers] if attribution is not None else []
    if bad:
        raise StudyError([loaded.source.problem(("detect", "sharing", "attribution", "layers"),
                                                f"layers {bad} past the model's {num_layers} layers (valid: 0..{num_layers - 1})")])


def _check_top_k(loaded: LoadedStudy, dims: dict[str, Any]) -> None:
    """A top-k count must fit its site's layer width (a larger one would keep every neuron)."""
    p = loaded.study.detect.plnd
    if p is None or p.rule != "topk_intersect":
        return
    q, kv = dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"]  # as sites.site_width (no torch here)
    widths = {"ffn": dims["intermediate"], "attn.q": q, "attn.o": q, "attn.k": kv, "attn.v": kv}
    problems = [loaded.source.problem(("detect", "plnd", "top_k", site), f"top_k {k} exceeds the {widths[site]} {site} "
                                      f"neurons per layer; use a count up to {widths[site]} or a fraction in (0, 1)")
                for site, k in p.top_k.items() if isinstance(k, int) and k > widths[site]]
    if problems:
        raise StudyError(problems)


def _add_plnd(plan: Plan, study: Study) -> None:
    p = study.detect.plnd
    assert p is not None
    corpus = study.corpora[p.corpus]
    sites = p.site_list()
    langs = corpus.languages or study.languages
    missing = [lang for lang in study.languages if lang not in langs]
    if missing:
        plan.notes.append(f"detect corpus {p.corpus!r} has no documents for {missing}: PLND sets for them are empty")
    stat_ids = []
    for lang in langs:
        spec = K.PlndStats(
            lang=lang, corpus=p.corpus, sites=sites, token_reduce=p.token_reduce, **p.batching(), max_tokens=corpus.max_tokens,
            top_k={s: p.top_k[s] for s in sites if s in p.top_k} if p.rule == "topk_intersect" else {},
            **({"halves_seed": study.seed if p.stability.seed is None else p.stability.seed} if p.stability.halves else {}),
        )
        stat_ids.append(plan.add(Stage(ids.stats_plnd(lang), "stats.plnd", spec, deps=(ids.corpus(p.corpus),),
                                       model_bound=True, origin=("detect", "plnd"), lang=lang,
                                       reads=_docs(p.corpus, lang))).id)
    epsilon: dict[str, float | Quantile] = {}
    for site in sites:
        eps = p.threshold(site)  # never None: the reference checks require an ε per site
        assert eps is not None
        epsilon[site] = eps if isinstance(eps, Quantile) else float(eps)
    plan.add(Stage(ids.select("plnd"), "select.plnd", K.PlndSelect(
        sites=sites, epsilon=epsilon, rule=p.rule, languages=study.languages,
        top_k={s: p.top_k[s] for s in sites} if p.rule == "topk_intersect" else {}, halves=p.stability.halves,
    ), deps=tuple(stat_ids), origin=("detect", "plnd", "epsilon")))


def _add_activation_methods(plan: Plan, study: Study) -> None:
    """LAPE, LinguaFranca and Sharing read one activation-statistics pass per corpus and
    language — computed once even when several methods use the same corpus."""
    d = study.detect
    needs: dict[str, dict[str, Any]] = {}
    for method, spec in (("lape", d.lape), ("linguafranca", d.linguafranca), ("sharing", d.sharing)):
        if spec is None:
            continue
        need = needs.setdefault(spec.corpus, {"poolings": [], "gate_counts": False, "thresholds": [], **spec.batching()})
        if method == "lape":
            need["gate_counts"] |= spec.event == "gate"
            if spec.event == "neuron":
                need["thresholds"] = sorted(set(need["thresholds"]) | {0.0})
            continue
        pooling = SHARING_EVENTS[spec.event] if method == "sharing" else "mean"
        if pooling not in need["poolings"]:
            need["poolings"].append(pooling)
    for arm in study.arms:  # a magnitude-matched control ranks neurons by mean |activation| on its corpus
        name = match_corpus(study, arm.selection)
        if name is not None:
            need = needs.setdefault(name, {"poolings": [], "gate_counts": False, "thresholds": [], **Batching().batching()})
            if "mean_abs" not in need["poolings"]:
                need["poolings"].append("mean_abs")
    for corpus_name, need in needs.items():
        corpus = study.corpora[corpus_name]
        for lang in corpus.languages or study.languages:
            plan.add(Stage(ids.stats_act(corpus_name, lang), "stats.act",
                           K.ActStats(**need, lang=lang, corpus=corpus_name, max_tokens=corpus.max_tokens),
                           deps=(ids.corpus(corpus_name),), model_bound=True, origin=("corpora", corpus_name), lang=lang,
                           reads=_docs(corpus_name, lang)))

    def stats_deps(corpus_name: str) -> tuple[str, ...]:
        return tuple(sid for sid, s in plan.stages.items() if s.kind == "stats.act" and s.spec.corpus == corpus_name)

    if d.lape is not None:
        plan.add(Stage(ids.select("lape"), "select.lape", K.LapeSelect(**d.lape.model_dump(exclude=BATCHING)),
                       deps=stats_deps(d.lape.corpus), origin=("detect", "lape")))
    if d.linguafranca is not None:
        langs = study.corpora[d.linguafranca.corpus].languages or study.languages
        reachable = math.sqrt(len(langs) - 1)
        if d.linguafranca.z_threshold >= reachable:
            plan.notes.append(f"detect.linguafranca.z_threshold {d.linguafranca.z_threshold} is unreachable with "
                              f"{len(langs)} languages (the largest possible z-score is √(n−1) = {reachable:.2f}): "
                              "every key linguistic region will be empty")
        plan.add(Stage(ids.select("linguafranca"), "select.linguafranca",
                       K.LinguaFrancaSelect(**d.linguafranca.model_dump(exclude=BATCHING)),
                       deps=stats_deps(d.linguafranca.corpus), origin=("detect", "linguafranca")))
    if d.sharing is not None:
        if d.sharing.event == "magnitude" and 0.0 in d.sharing.thresholds:
            plan.notes.append("detect.sharing.event magnitude at τ = 0: |activation| > 0 holds for nearly every neuron, "
                              "so nearly all are all-shared; use thresholds above 0")
        spec = K.SharingSelect(corpus=d.sharing.corpus, event=d.sharing.event, thresholds=d.sharing.thresholds,
                               set_threshold=d.sharing.set_threshold, min_fraction=d.sharing.min_fraction,
                               attribution=d.sharing.attribution)
        plan.add(Stage(ids.select("sharing"), "select.sharing", spec,
                       deps=stats_deps(d.sharing.corpus) + _add_sharing_attribution(plan, study),
                       origin=("detect", "sharing")))
    lens = study.analyses.logit_lens
    if lens is not None:
        corpus = study.corpora[lens.corpus]
        for lang in corpus.languages or study.languages:
            plan.add(Stage(ids.logit_lens(lang), "logit_lens",
                           K.LogitLens(**lens.model_dump(exclude=BATCHING), **lens.batching(), lang=lang,
                                       max_tokens=corpus.max_tokens, languages=study.languages),
                           deps=(ids.corpus(lens.corpus),), model_bound=True, origin=("analyses", "logit_lens"), lang=lang,
                           reads=_docs(lens.corpus, lang)))


def _add_sharing_attribution(plan: Plan, study: Study) -> tuple[str, ...]:
    """attr/sharing/LANG: attributions of the first `docs` items of the sharing corpus (none without `attribution`)."""
    sharing = study.detect.sharing
    attr = sharing.attribution if sharing is not None else None
    if sharing is None or attr is None:
        return ()
    corpus = study.corpora[sharing.corpus]
    ig = attr.method == "ig"  # ig's quadrature fields do not touch activation_norm's key
    attr_ids = []
    for lang in corpus.languages or study.languages:
        spec = K.SharingAttribution(lang=lang, corpus=sharing.corpus, max_tokens=corpus.max_tokens, **sharing.batching(),
                                    method=attr.method, docs=attr.docs, layers=attr.layers,
                                    steps=attr.steps if ig else None, step_batch=attr.step_batch if ig else None,
                                    probes=attr.probes if ig else None)
        attr_ids.append(plan.add(Stage(ids.attr_sharing(lang), "attr.sharing", spec, deps=(ids.corpus(sharing.corpus),),
                                  model_bound=True, origin=("detect", "sharing", "attribution"), lang=lang,
                                  reads=_docs(sharing.corpus, lang))).id)
    return tuple(attr_ids)


def _add_mask(plan: Plan, study: Study, index: int) -> None:
    """mask/ARM, or for a random control with several draws one mask/ARM/drawK per draw: each
    draw is its own cached stage, so adding draws reuses the earlier ones."""
    arm = study.arms[index]
    d = arm.selection
    if d.random_like is not None:
        seed = study.seed if d.seed is None else d.seed
        dims = K.ModelDims(**{f: plan.dims[f] for f in K.ModelDims.model_fields})
        draws = d.draw_count(arm.kind)
        corpus = match_corpus(study, d)  # match: magnitude reads the mean |activation| of that corpus's pass
        magnitudes = tuple(sid for sid, s in plan.stages.items() if s.kind == "stats.act" and s.spec.corpus == corpus)
        blocks = _expert_blocks(plan.dims.get("experts"))  # a mixture of experts: draws matched per expert
        for k in range(1, draws + 1):
            # draw 1 is the single draw of a one-draw control (same spec, same cached entry)
            pool = [study.partitions[n] for n in d.partition_names()] if d.scope == "partition" else None
            spec = K.Mask(random_like=d.random_like, seed=seed + DRAW_SEED_STRIDE * (k - 1), dims=dims,
                          **({"scope": d.scope, "layers": pool} if d.scope != "layer" else {}),
                          **({"ffn_blocks": blocks} if blocks and d.scope == "layer" and not magnitudes else {}),
                          **({"match_bins": d.match_bins} if magnitudes else {}))
            draw = k if draws > 1 else None
            plan.add(Stage(ids.mask(arm.name, draw), "mask", spec, deps=(ids.mask(d.random_like), ids.SETS) + magnitudes,
                           origin=("arms", index), arm=arm.name, draw=draw, reads={ids.SETS: ()}))  # reads no set
        return
    layers = [study.partitions[n] for n in d.partition_names()] or None
    spec = K.Mask(neurons=d.neurons, layers=layers, sites=expand_sites(list(d.sites)) if d.sites else None,
                  **({"count": d.count, "seed": study.seed if d.seed is None else d.seed} if d.count else {}))
    plan.add(Stage(ids.mask(arm.name), "mask", spec, deps=(ids.SETS,), origin=("arms", index), arm=arm.name))


def _expert_blocks(experts: dict[str, int] | None) -> list[int] | None:
    """Where each expert's ffn neurons start in a MoE layer's flat numbering, then the width (None: dense)."""
    if not experts:
        return None
    n, width, shared = experts["num_experts"], experts["width"], experts.get("shared", 0)
    return [e * width for e in range(n + 1)] + ([n * width + shared] if shared else [])


#: seeds of successive draws of a random control are this far apart (languages use offsets of 1000)
DRAW_SEED_STRIDE = 100_000


def mean_corpus(arm: Any) -> str | None:
    """The corpus whose activation means a mean-ablation arm writes in; None for an arm that zeroes or enhances."""
    return arm.deactivate.mean_corpus if arm.deactivate is not None else None


def arm_draws(study: Study, arm_name: str) -> list[int | None]:
    """[None] for an arm with one mask; [1, …, D] for a random control with D draws (an
    evaluation's `draws: N` takes the first N, so they are the draws every evaluation shares)."""
    arm = study.arm(arm_name)
    assert arm is not None
    n = arm.selection.draw_count(arm.kind)
    return [None] if n == 1 else list(range(1, n + 1))


def _add_enhance(plan: Plan, study: Study, index: int) -> None:
    """One neuron-restricted fine-tune per enhanced language; its result is a delta of the trained rows."""
    arm = study.arms[index]
    e = arm.enhance
    assert e is not None
    corpus = study.corpora[e.corpus]
    family = arm_is_family(study, arm.name)
    seed = study.seed if e.seed is None else e.seed
    for lang in arm_languages(study, arm.name):
        spec = K.Enhance(lang=lang, mask_lang=lang if family else None, corpus=e.corpus, docs=e.docs,
                         max_tokens=corpus.max_tokens, settings=K.Settings(**e.settings(seed)))
        plan.add(Stage(ids.enhance(arm.name, lang), "enhance", spec, deps=(ids.corpus(e.corpus), ids.mask(arm.name)),
                       model_bound=True, origin=("arms", index, "enhance"), lang=lang, arm=arm.name,
                       reads={**_docs(e.corpus, lang), ids.mask(arm.name): (artifacts.set_file(artifacts.MASK, spec.mask_lang),)}))


def arm_languages(study: Study, arm_name: str) -> list[str]:
    """The languages an arm has a variant for: one neuron set (and, for enhance, one fine-tune) each."""
    arm = study.arm(arm_name)
    assert arm is not None
    if arm.enhance is not None:
        target = study.arm(arm.enhance.random_like) if arm.enhance.random_like else arm
        return list((target.enhance.languages if target and target.enhance else None) or study.languages)
    return list(study.languages) if arm_is_family(study, arm_name) else []


def arm_is_family(study: Study, arm_name: str) -> bool:
    arm = study.arm(arm_name)
    assert arm is not None
    if arm.selection.random_like is not None:
        return arm_is_family(study, arm.selection.random_like)
    _, families = set_order(study)
    return arm.selection.neurons in families


def _add_evals(plan: Plan, study: Study, name: str) -> None:
    ev = study.evaluate[name]
    corpus = study.corpora[ev.corpus]
    langs = corpus.languages or study.languages
    # only generation reads the study's languages (language identification's candidates): elsewhere
    # they stay out of the key, so adding a language leaves the others' evaluations reusable
    base = {"metric": ev.metric, "seed": study.seed, "languages": study.languages if ev.metric == "generation" else None,
            "options": {**ev.batching(), "bootstrap": ev.bootstrap, "max_tokens": corpus.max_tokens, **ev.options}}
    cdep = ids.corpus(ev.corpus)
    where: dict[str, Any] = {"model_bound": True, "origin": ("evaluate", name), "evaluation": name}
    for lang in langs:
        plan.add(Stage(ids.evaluation(name, None, lang), "eval", K.Evaluation(**base, lang=lang, arm=None, arm_kind=None, mask_lang=None),
                       deps=(cdep,), lang=lang, reads=_docs(ev.corpus, lang), **where))
    for arm in study.arms:
        if ev.arms is not None and arm.name not in ev.arms:
            continue
        means = mean_corpus(arm)
        arm_spec: dict[str, Any] = {"arm": arm.name, "arm_kind": arm.kind, "mean_corpus": means}
        variants = arm_languages(study, arm.name)
        for draw in arm_draws(study, arm.name)[: ev.draws]:
            draw_spec = {} if draw is None else {"draw": draw, "random_like": arm.selection.random_like}
            for mlang in variants or [None]:
                dep = ids.enhance(arm.name, mlang) if arm.enhance is not None else ids.mask(arm.name, draw)
                for lang in langs:
                    if variants and not _evaluated_on(ev.on, lang, mlang, study.report.baseline_language):
                        continue
                    sid = ids.evaluation(name, arm.name, lang, draw=draw, mask_lang=mlang)
                    # a deactivation reads the base result too: with nothing switched off, that is its result
                    base_dep = (ids.evaluation(name, None, lang),) if arm.kind == "deactivate" else ()
                    plan.add(Stage(sid, "eval", K.Evaluation(**base, **arm_spec, **draw_spec, lang=lang, mask_lang=mlang),
                                   deps=(cdep, dep, *base_dep) + ((ids.means(means),) if means else ()), lang=lang,
                                   arm=arm.name, draw=draw, **where,
                                   reads={**_docs(ev.corpus, lang), **_mask_reads(arm, dep, mlang)}))


def _evaluated_on(on: str, lang: str, mask_lang: str | None, baseline: str | None) -> bool:
    """Whether `on` pairs a language's arm (`mask_lang`) with evaluated language `lang`."""
    return on == "all" or lang == mask_lang or (on == "baseline" and lang == baseline)


def _mask_reads(arm: Any, dep: str, mask_lang: str | None) -> dict[str, tuple[str, ...]]:
    """An evaluation under a deactivation arm reads its language's neurons of the mask (an enhance
    arm's delta is read whole)."""
    return {} if arm.enhance is not None else {dep: (artifacts.set_file(artifacts.MASK, mask_lang),)}


def _add_lm_evals(plan: Plan, loaded: LoadedStudy, name: str) -> None:
    """eval/NAME/…/COLUMN stages running lm-eval tasks; COLUMN is the study language (or the task
    of a language-neutral list). The key covers the task's files and data (neuronspec.plan.tasks)."""
    from neuronspec.plan.tasks import lm_eval_version, sources

    study = loaded.study
    ev = study.evaluate[name]
    assert isinstance(ev, LmEvalSpec)
    columns = ev.task_map()
    base_dir = loaded.path.parent if loaded.path is not None else Path.cwd()
    include = (base_dir / ev.include_path) if ev.include_path else None
    if include is not None and not include.is_dir():
        raise StudyError([loaded.source.problem(("evaluate", name, "include_path"), f"{include} is not a folder")])
    try:
        found = sources(sorted(set(columns.values())), include)
    except TextFileError as exc:  # a task file that cannot be read: at its own line and column
        raise StudyError([Problem(Location(exc.path, exc.line, exc.col), f"evaluate.{name}.include_path", exc.message)]) from None
    except (ValueError, OSError) as exc:
        raise StudyError([loaded.source.problem(("evaluate", name, "include_path"), str(exc))]) from None
    for task in found.values():
        if task.uses_corpus and ev.corpus is None:
            raise StudyError([loaded.source.problem(("evaluate", name, "tasks"), f"task {task.name!r} reads "
                                                    "data_files: '{corpus}': give the evaluation a `corpus`")])
    by_task: dict[str, list[str]] = {}
    for col, t in columns.items():
        by_task.setdefault(t, []).append(col)
    plan.notes.append(f"evaluate.{name}: lm-eval {lm_eval_version() or '(not installed: pip install neuronspec[tasks])'} tasks "
                      + "; ".join(found[t].describe() + ("" if cols == [t] else f" for {', '.join(cols)}")
                                  for t, cols in by_task.items()))
    deps = (ids.corpus(ev.corpus),) if ev.corpus is not None else ()
    base = {"seed": study.seed, "corpus": ev.corpus, "batch_size": ev.batch_size, "limit": ev.limit,
            "num_fewshot": ev.num_fewshot, "max_length": _lm_eval_max_length(plan, name, ev, study, found.values()),
            "metric_name": ev.metric_name, "bootstrap": ev.bootstrap}
    where: dict[str, Any] = {"model_bound": True, "origin": ("evaluate", name), "evaluation": name}

    def add(sid: str, column: str, arm: str | None, mlang: str | None, draw: int | None, dep: tuple[str, ...]) -> None:
        means = mean_corpus(study.arm(arm)) if arm else None
        spec = K.LmEvalStage(**base, lang=column, task=found[columns[column]].identity(), arm=arm,
                             arm_kind=study.arm(arm).kind if arm else None, mask_lang=mlang,  # type: ignore[union-attr]
                             draw=draw, random_like=study.arm(arm).selection.random_like if draw else None,  # type: ignore[union-attr]
                             mean_corpus=means)
        reads = {**(_docs(ev.corpus, column) if ev.corpus is not None else {}),
                 **(_mask_reads(study.arm(arm), dep[0], mlang) if arm else {})}  # type: ignore[arg-type]
        plan.add(Stage(sid, "eval.lm_eval", spec, deps=deps + dep + ((ids.means(means),) if means else ()), lang=column, arm=arm,
                       draw=draw, reads=reads, **where))

    for column in columns:
        add(ids.evaluation(name, None, column), column, None, None, None, ())
    for arm in study.arms:
        if ev.arms is not None and arm.name not in ev.arms:
            continue
        variants = arm_languages(study, arm.name)
        for draw in arm_draws(study, arm.name)[: ev.draws]:
            for mlang in variants or [None]:
                dep = ids.enhance(arm.name, mlang) if arm.enhance is not None else ids.mask(arm.name, draw)
                for column in columns:
                    # `on: self` pairs a language's arm with that language's task; a language-neutral list runs them all
                    if (variants and isinstance(ev.tasks, dict)
                            and not _evaluated_on(ev.on, column, mlang, study.report.baseline_language)):
                        continue
                    sid = ids.evaluation(name, arm.name, column, draw=draw, mask_lang=mlang)
                    base_dep = (ids.evaluation(name, None, column),) if arm.kind == "deactivate" else ()
                    add(sid, column, arm.name, mlang, draw, (dep, *base_dep))


def _lm_eval_max_length(plan: Plan, name: str, ev: Any, study: Any, tasks: Any) -> int | None:
    """lm-eval's context window for an evaluation whose scored (not generated) tasks read its corpus. lm-eval keeps the
    last max_length + 1 tokens of a request; neuronspec's `choice` keeps the last `max_tokens` of
    an item: unset, max_length follows the corpus so both evaluators score the same prompts, and
    a max_length that cuts differently is said in the plan's notes (the two would disagree)."""
    corpus = study.corpora.get(ev.corpus) if ev.corpus is not None else None
    scored = [t for t in tasks if t.uses_corpus and t.output_type in ("multiple_choice", "loglikelihood")]
    if corpus is None or not scored:  # generation needs room beyond the prompt: nothing to match
        return ev.max_length
    if ev.max_length is None:
        plan.notes.append(f"evaluate.{name}: lm-eval max_length {corpus.max_tokens - 1} (corpus {ev.corpus!r} keeps "
                          f"{corpus.max_tokens} tokens of an item, as `choice` does)")
        return corpus.max_tokens - 1
    if ev.max_length + 1 != corpus.max_tokens:
        plan.notes.append(f"evaluate.{name}: lm-eval keeps the last {ev.max_length + 1} tokens of a request, corpus "
                          f"{ev.corpus!r} {corpus.max_tokens}: where items are longer, lm-eval and `choice` score different "
                          f"prompts (max_length {corpus.max_tokens - 1} makes them agree)")
    return ev.max_length
