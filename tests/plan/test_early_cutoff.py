"""Early cutoff: a stage whose inputs came out identical in content is reused, not recomputed.

Expectations are built independently of the cutoff: which documents a language's sample
holds is read from the corpus entries, whether a neuron set changed is read by loading the
stored sets and comparing their tensors. Without cutoff (stage keys over input keys only)
every assertion that a stage was *not* computed fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuronspec.data.splits import in_eval, shuffled
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import RunContext, explain, run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import load_study

SEED, EVAL_FRACTION, SAMPLE = 0, 0.4, 6  # the detect corpus of tiny_studies.STUDY


def run(path: Path, *overrides: str, **kw):  # noqa: ANN201
    loaded = load_study(path, overrides)
    plan = compile_study(loaded)
    store = Store(path.parent / ".neuronspec")
    return plan, store, run_plan(plan, store, loaded.study, **kw)


def _tensors(store: Store, key: str, name: str) -> dict[str, torch.Tensor] | None:
    path = store.entry_dir(key) / name
    return load_file(str(path)) if path.exists() else None


def _same(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _sample_ids(store: Store, plan, lang: str) -> list[str]:  # noqa: ANN001
    return [d["id"] for d in json.loads((store.entry_dir(plan.stages["corpus/detect"].key) / f"{lang}.json").read_text())]


def _append_sampled_doc(corpus: Path, lang: str) -> str:
    """Append a `lang` document that enters its detect sample (detect split, among the first SAMPLE by hash)."""
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    detect = [r["id"] for r in rows if r["lang"] == lang and not in_eval(SEED, r["id"], EVAL_FRACTION)]
    for i in range(1000):
        new = f"{lang}-appended-{i}"
        if not in_eval(SEED, new, EVAL_FRACTION) and new in shuffled(detect + [new], SEED)[:SAMPLE]:
            break
    with corpus.open("a") as f:
        f.write(json.dumps({"id": new, "lang": lang, "text": "qrstuvwx " * 4}) + "\n")
    return new


def test_appending_one_languages_document_keeps_the_other_languages_statistics(study_file: Path) -> None:
    plan, store, first = run(study_file)
    before = {lang: _sample_ids(store, plan, lang) for lang in ("en", "fr", "de")}
    new = _append_sampled_doc(study_file.parent / "corpus.jsonl", "de")

    plan2, store, again = run(study_file)
    after = {lang: _sample_ids(store, plan2, lang) for lang in ("en", "fr", "de")}
    assert new in after["de"] and after["en"] == before["en"] and after["fr"] == before["fr"]  # the premise
    assert {"corpus/detect", "corpus/ppl", "stats/plnd/de"} <= set(again.computed)
    for lang in ("en", "fr"):  # new keys (the corpus file changed), same documents: reused, no forward pass
        sid = f"stats/plnd/{lang}"
        assert plan2.stages[sid].key != plan.stages[sid].key
        assert again.reused[sid] == sid and sid not in again.computed
    # the ppl corpus (eval split) holds the same documents: its base evaluations are reused too
    assert all(sid in again.reused for sid in plan2.stages if sid.startswith("eval/ppl/base/"))
    reasons = {s.stage.id: (s.state, s.reasons) for s in explain(plan2, store)}
    assert reasons["stats/plnd/en"][0] == "cached"
    assert reasons["stats/plnd/en"][1][0].startswith("inputs identical in content to stats/plnd/en")
    assert reasons["stats/plnd/de"] == ("cached", [])  # computed


def test_epsilon_change_with_identical_sets_recomputes_no_evaluation(study_file: Path) -> None:
    plan, store, _ = run(study_file)
    plan2, store, again = run(study_file, "detect.plnd.epsilon.quantile=0.90001")
    old, new = plan.stages["select/plnd"].key, plan2.stages["select/plnd"].key
    assert old != new
    assert all(_same(_tensors(store, old, f"plnd.{lang}.safetensors"), _tensors(store, new, f"plnd.{lang}.safetensors"))
               for lang in ("en", "fr", "de"))  # the premise: the same neurons selected
    assert again.computed == ["select/plnd"]
    downstream = [sid for sid in plan2.downstream(["select/plnd"]) if sid != "select/plnd"]
    assert downstream and set(again.reused) == set(downstream)
    assert any(sid.startswith("eval/") for sid in downstream)
    assert all(plan2.stages[sid].key != plan.stages[sid].key for sid in downstream)  # new keys, reused results


def test_epsilon_change_that_changes_a_set_recomputes_what_reads_it(study_file: Path) -> None:
    plan, store, _ = run(study_file)
    plan2, store, again = run(study_file, "detect.plnd.epsilon.quantile=0.5")
    mask_changed = {}
    for arm in ("early", "early-random/draw1", "early-random/draw2"):
        old, new = plan.stages[f"mask/{arm}"].key, plan2.stages[f"mask/{arm}"].key
        for lang in ("en", "fr", "de"):
            mask_changed[arm.split("/")[0], plan.stages[f"mask/{arm}"].draw, lang] = not _same(
                _tensors(store, old, f"mask.{lang}.safetensors"), _tensors(store, new, f"mask.{lang}.safetensors"))
    assert any(mask_changed.values())  # the premise: ε 0.5 selects other neurons
    assert "sets" in again.computed and "mask/early" in again.computed
    for sid, stage in plan2.stages.items():
        if stage.kind == "eval" and stage.arm is not None:
            changed = mask_changed[stage.arm, stage.draw, stage.spec.mask_lang]
            assert (sid in again.computed) == changed and (sid in again.reused) == (not changed), sid


def test_plan_predicts_reuse_once_the_inputs_are_stored(study_file: Path) -> None:
    run(study_file)
    plan, store, partial = run(study_file, "detect.plnd.epsilon.quantile=0.90001", only=["select/plnd"])
    assert partial.computed == ["select/plnd"]
    status = {s.stage.id: s for s in explain(plan, store)}
    assert status["sets"].state == "stale" and status["sets"].reused_from == "sets"
    assert status["sets"].reasons[-1].startswith("inputs identical in content to sets") and "will be reused" in status["sets"].reasons[-1]
    assert status["mask/early"].reused_from == "mask/early"  # predicted through the predicted sets
    assert status["select/plnd"].state == "cached" and status["select/plnd"].reused_from is None


def test_forced_stages_are_recomputed_not_reused(study_file: Path) -> None:
    run(study_file)
    _, _, forced = run(study_file, force=["sets"])
    assert "sets" in forced.computed and not forced.reused


def test_a_stage_reads_only_the_files_it_declares(study_file: Path) -> None:
    """What the content key does not cover cannot be read: another language's documents raise."""
    loaded = load_study(study_file)
    plan, store, _ = run(study_file, only=["corpus/detect"])
    stage = plan.stages["stats/plnd/en"]
    entry = RunContext(loaded.study, plan, store).input(stage, "corpus/detect")
    assert json.loads(entry.file("en.json").read_text())
    with pytest.raises(KeyError, match="fr.json"):
        entry.file("fr.json")


def test_equal_neuron_sets_are_written_as_equal_bytes(tmp_path: Path) -> None:
    """Content digests compare bytes: safetensors' metadata map comes out in a hash order that
    changes from call to call, so the writer sorts it (without that, no set would ever match)."""
    import hashlib

    from neuronspec.models.masks import NeuronSet

    ns = NeuronSet({"ffn": {0: torch.tensor([1, 5, 9]), 2: torch.tensor([3])}, "attn.v": {1: torch.tensor([0, 2])}})
    digests = set()
    for i in range(20):
        path = ns.save(tmp_path / f"set{i}.safetensors")
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert NeuronSet.load(tmp_path / "set0.safetensors").jaccard(ns) == 1.0


def test_content_index_is_checked_and_swept_by_gc(tmp_path: Path) -> None:
    """The content index only points: an entry that does not record that content key is not served,
    and gc removes index files whose entry it deleted."""
    store = Store(tmp_path / "store")
    entry = store.put("a" * 64, "sets", "sets", lambda out: (out / "x.json").write_text("1"), info={"content": "c" * 64})
    assert store.find_content("c" * 64) == store.get(entry.key)
    (store.root / "content" / "dd").mkdir()
    (store.root / "content" / "dd" / ("d" * 64)).write_text(entry.key)  # points at an entry made from other content
    assert store.find_content("d" * 64) is None
    reused = store.reuse("b" * 64, "sets", "sets", entry, {"content": "c" * 64})
    assert reused.meta["reused_from"] == {"key": entry.key, "stage": "sets"} and store.status(reused.key) == "cached"
    assert store.find_content("c" * 64).key == reused.key  # the newest entry with that content
    store.gc(keep={entry.key})
    assert store.find_content("c" * 64) is None  # its entry is gone, and so is the index file
    assert not (store.root / "content" / "cc" / ("c" * 64)).exists()
    assert (store.root / "content" / "dd" / ("d" * 64)).exists()  # points at a kept entry


def test_a_content_index_file_never_names_a_path(tmp_path: Path) -> None:
    """What an index file says is a key or nothing: a crafted path is not followed, and gc removes it."""
    store = Store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "meta.json").write_text(json.dumps({"key": "../../../outside", "files": {}, "content": "e" * 64}))
    store.put("a" * 64, "sets", "sets", lambda out: None)
    (store.root / "content" / "ee").mkdir()
    (store.root / "content" / "ee" / ("e" * 64)).write_text("../../../outside")
    assert store.find_content("e" * 64) is None
    store.gc(keep={"a" * 64})
    assert not (store.root / "content" / "ee" / ("e" * 64)).exists() and (outside / "meta.json").exists()


def test_adding_a_language_reuses_the_other_languages_evaluations(study_file: Path) -> None:
    """Sets that do not depend on the other languages (per-layer top-k, `plnd[lang]`): with `de`
    added, en's and fr's evaluations read the same documents and the same neurons, so they are
    reused; de's are computed."""
    settings = ("detect.plnd.rule=topk_intersect", "neurons.specific=plnd[lang]")
    plan, store, first = run(study_file, "languages=[en, fr]", *settings)
    plan2, store, again = run(study_file, *settings)
    old_evals = {sid for sid in plan.stages if sid.startswith("eval/")}
    assert old_evals and old_evals <= set(plan2.stages)
    assert all(plan.stages[sid].key != plan2.stages[sid].key for sid in old_evals)  # new keys (the corpus holds de now)
    assert old_evals <= set(again.reused), sorted(old_evals - set(again.reused))
    computed_evals = {sid for sid in again.computed if sid.startswith("eval/")}
    assert computed_evals and all(sid.endswith("/de") or "de@" in sid or sid.endswith("@de") for sid in computed_evals)
