"""Neuron sets imported from files (`neurons: {NAME: {file: PATH}}`): JSON and safetensors, single
sets and one file per language, in set algebra and arms — the stored sets checked against Python
set operations on the files' lists; bad files named with their field; the content in the key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from neuronspec.cli import main
from neuronspec.models.masks import NeuronSet
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import StudyError, load_study

# the tiny llama: 3 layers, ffn 48, attn.q / attn.o 32, attn.k / attn.v 16 neurons per layer
TL = {"ffn": {"0": [1, 5, 5, 9], "2": [47]}, "attn.q": {"1": [0, 31]}}
PER_LANG = {"en": {"ffn": {"0": [1, 2, 3]}, "attn.v": {"2": [4]}}, "fr": {"ffn": {"0": [3, 4]}, "attn.v": {"2": [4, 15]}}}

STUDY = """\
name: imported
model: {{id: {model}}}
languages: [en, fr]
neurons:
  tl: {{file: {tl}}}
  mine: {{file: "sets/{{lang}}.json"}}  # quoted: braces are YAML flow syntax
  specific: mine[lang] - mine[others]
  shared_tl: tl & mine[any]
arms:
  - {{name: off, deactivate: {{neurons: specific}}}}
  - {{name: tl-early, deactivate: {{neurons: tl, layers: early}}}}
partitions: {{early: [0, 1]}}
"""


def flat(d: dict[str, dict[str, list[int]]]) -> set[tuple[str, int, int]]:
    return {(site, int(layer), i) for site, layers in d.items() for layer, idx in layers.items() for i in idx}


def as_flat(ns: NeuronSet) -> set[tuple[str, int, int]]:
    return {(site, layer, int(i)) for site, layer, t in ns.items() for i in t}


def write_study(tmp_path: Path, model: Path, tl: str = "tl.json") -> Path:
    (tmp_path / "sets").mkdir(exist_ok=True)
    for lang, d in PER_LANG.items():
        (tmp_path / "sets" / f"{lang}.json").write_text(json.dumps(d))
    if not (tmp_path / tl).exists():
        (tmp_path / tl).write_text(json.dumps(TL))
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model=model, tl=tl))
    return path


def test_imported_sets_in_algebra_and_arms(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path.parent)  # paths resolve from the study, not the working folder
    loaded = load_study(write_study(tmp_path, tiny_model_dir))
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study)
    sets = store.entry_dir(plan.stages["sets"].key)
    en, fr = flat(PER_LANG["en"]), flat(PER_LANG["fr"])
    assert as_flat(NeuronSet.load(sets / "tl.safetensors")) == flat(TL)
    assert as_flat(NeuronSet.load(sets / "specific.en.safetensors")) == en - fr
    assert as_flat(NeuronSet.load(sets / "specific.fr.safetensors")) == fr - en
    assert as_flat(NeuronSet.load(sets / "shared_tl.safetensors")) == flat(TL) & (en | fr)
    masks = store.entry_dir(plan.stages["mask/tl-early"].key)
    assert as_flat(NeuronSet.load(masks / "mask.safetensors")) == {n for n in flat(TL) if n[1] == 0}
    assert as_flat(NeuronSet.load(store.entry_dir(plan.stages["mask/off"].key) / "mask.fr.safetensors")) == fr - en


def test_safetensors_indices_masks_and_saved_sets_read_as_the_json(tmp_path: Path, tiny_model_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    mask = np.zeros(48, dtype=bool)
    mask[[1, 5, 9]] = True
    save_file({"ffn/0": mask, "ffn/2": np.array([47], dtype=np.int32), "attn.q/1": np.array([31, 0], dtype=np.int64)},
              str(tmp_path / "tl.safetensors"))
    NeuronSet.from_dict(TL).save(tmp_path / "saved.safetensors")
    want = compile_study(load_study(write_study(tmp_path, tiny_model_dir))).stages["sets"].spec.imports["tl"]
    for name in ("tl.safetensors", "saved.safetensors"):
        plan = compile_study(load_study(write_study(tmp_path, tiny_model_dir, name)))
        loaded = load_study(tmp_path / "study.yaml")
        store = Store(tmp_path / f".store-{name}")
        run_plan(plan, store, loaded.study, only=["sets"])
        assert as_flat(NeuronSet.load(store.entry_dir(plan.stages["sets"].key) / "tl.safetensors")) == flat(TL)
        assert plan.stages["sets"].spec.imports["tl"].files["*"].sha256 != want.files["*"].sha256  # other bytes


def test_the_files_content_is_in_the_key(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = write_study(tmp_path, tiny_model_dir)
    before = compile_study(load_study(path))
    os.utime(tmp_path / "tl.json", (1, 1))  # touched, same content: same key
    assert compile_study(load_study(path)).stages["sets"].key == before.stages["sets"].key
    (tmp_path / "tl.json").write_text(json.dumps({"ffn": {"0": [1]}}))
    plan = compile_study(load_study(path))
    for sid in ("sets", "mask/tl-early", "mask/off"):  # and everything downstream
        assert plan.stages[sid].key != before.stages[sid].key
    # changed between planning and running: refused, not silently read
    (tmp_path / "tl.json").write_text(json.dumps({"ffn": {"0": [2]}}))
    with pytest.raises(Exception, match="changed since the study was planned"):
        run_plan(plan, Store(tmp_path / ".neuronspec"), load_study(path).study, only=["sets"])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("tl.json", {"ffn": {"3": [1]}}, "ffn.3: layer 3 out of range: the model has 3 layers"),
    ("tl.json", {"ffn": {"0": [1, 48]}}, r"ffn.0\[1\]: index 48 out of range: ffn has 48 neurons per layer"),
    ("tl.json", {"attn.k": {"1": [16]}}, r"attn.k.1\[0\]: index 16 out of range: attn.k has 16"),
    ("tl.json", {"mlp": {"0": [1]}}, "mlp: not a site"),
    ("tl.json", {"ffn": {"0": [1, True]}}, r"ffn.0\[1\]: True is not an integer index"),
    ("tl.json", {"ffn": {"first": [1]}}, "ffn.first: layer 'first' is not a layer number"),
    ("tl.json", {"ffn": [1, 2]}, "ffn: expected an object"),
    ("tl.json", "not json {", "not JSON"),
    ("tl.safetensors", {"ffn/0": np.ones(47, dtype=bool)}, "ffn/0: a boolean mask of 47 entries; ffn has 48"),
    ("tl.safetensors", {"ffn/0": np.ones(3, dtype=np.float32)}, "ffn/0: dtype float32 is neither"),
    ("tl.safetensors", {"ffn/0": np.ones((2, 2), dtype=np.int64)}, r"ffn/0: expected a 1-D tensor"),
    ("tl.safetensors", {"ffn0": np.ones(2, dtype=np.int64)}, "ffn0: tensor names are SITE/LAYER"),
    ("tl.safetensors", b"\x00" * 16, "not a safetensors file"),
])
def test_bad_files_name_file_and_field_and_exit_2(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], name: str, content: object,
                                                  message: str) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    file = tmp_path / name
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif name.endswith(".safetensors"):
        save_file(content, str(file))  # type: ignore[arg-type]
    else:
        file.write_text(content if isinstance(content, str) else json.dumps(content))
    path = write_study(tmp_path, tiny_model_dir, name)
    with pytest.raises(StudyError, match=f"{file}: {message}"):
        compile_study(load_study(path))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "neurons.tl.file" in err and str(file) in err


def test_missing_oversized_and_odd_files_are_refused(tmp_path: Path, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import neuronspec.setfiles as setfiles

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = write_study(tmp_path, tiny_model_dir)
    (tmp_path / "sets" / "fr.json").unlink()  # a family needs every language's file
    with pytest.raises(StudyError, match=r"sets/fr.json: cannot read it"):
        compile_study(load_study(path))
    write_study(tmp_path, tiny_model_dir)
    monkeypatch.setattr(setfiles, "MAX_SET_BYTES", 16)
    with pytest.raises(StudyError, match="larger than 0 KiB"):
        compile_study(load_study(path))
    monkeypatch.undo()
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    os.mkfifo(tmp_path / "fifo.json")  # a reader must not wait for a writer
    with pytest.raises(StudyError, match="not a regular file"):
        compile_study(load_study(write_study(tmp_path, tiny_model_dir, "fifo.json")))
    with pytest.raises(StudyError, match="should match pattern"):
        load_study(text=STUDY.format(model=tiny_model_dir, tl="tl.txt"), name="s.yaml")
    with pytest.raises(StudyError, match="'tl' is a single set; it takes no \\[lang\\]"):
        load_study(text=STUDY.format(model=tiny_model_dir, tl="tl.json").replace("tl & mine[any]", "tl[lang]"), name="s.yaml")
