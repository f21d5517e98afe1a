"""Model identity for cache keys — computed without loading weights.

A cached result must never be reused for another model (lm-evaluation-harness keys its
cache by name only). Identity is therefore a content digest: the GGUF's sha256 for
embedded models, a digest of the weight files for local folders (memoised by size and
mtime so a 14 GB checkpoint is hashed once), the resolved commit for hub ids.
Layer counts and widths (`dims`) are memoised by identity too, so planning an unchanged
study never imports transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from neuronspec.fileio import memo_sha256, write_json
from neuronspec.paths import user_cache
from neuronspec.plan.store import digest
from neuronspec.spec.models import ModelSpec

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".json", ".model", ".txt")


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    from neuronspec.models.catalog import embedded_digest, is_embedded

    ident: dict[str, Any] = {"id": spec.id, "dtype": spec.dtype}
    path = Path(spec.id).expanduser()
    if is_embedded(spec.id):
        ident["digest"] = embedded_digest(spec.id)
    elif path.exists():
        ident["digest"] = _path_digest(path, spec.gguf_file)
    else:
        ident["revision"] = _hub_revision(spec.id, spec.revision)
    if spec.gguf_file:
        ident["gguf_file"] = spec.gguf_file
    return ident


def _path_digest(path: Path, gguf_file: str | None) -> str:
    """The model's files, top level only: a Hugging Face folder is flat, and walking below it would
    hash whatever else lives there (a study's own store inside it, which changes every run)."""
    if path.is_dir() and not (path / "config.json").is_file() and not (gguf_file and (path / gguf_file).is_file()):
        raise ValueError(f"{path} is not a model folder (no config.json{' or ' + gguf_file if gguf_file else ''} in it)")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if gguf_file and path.is_dir():
        files = [path / gguf_file] + [p for p in files if p.suffix == ".json"]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(memo_sha256(f).encode())
    return h.hexdigest()


def _hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit a hub id resolves to: from the local HF cache if there, else asked of the hub."""
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
        if ref.exists():
            return ref.read_text().strip()
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha or (revision or "main")
    except Exception as exc:  # offline and not cached: the load would fail too
        raise RuntimeError(
            f"model {repo_id!r}: not an embedded name, not a local path, and its revision cannot be resolved "
            f"({type(exc).__name__}: {exc}). Embedded models: see `neuronspec models`."
        ) from exc


def model_dims(spec: ModelSpec, identity: dict[str, Any]) -> dict[str, Any]:
    """Layer count and site widths, read from the config once and memoised by identity."""
    memo = user_cache() / "dims" / f"{digest(identity)[:32]}.json"
    try:
        memoised = json.loads(memo.read_text())
        if "experts" in memoised:  # memos written before the expert layout was kept are read again
            return memoised
    except (OSError, ValueError):
        pass
    from neuronspec.models.loading import load_config
    from neuronspec.models.sites import adapter_for

    config = load_config(spec.id, revision=spec.revision, gguf_file=spec.gguf_file)
    adapter = adapter_for(config)
    dims = adapter.dims(config)
    out = {k: getattr(dims, k) for k in ("num_layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim")}
    out["model_type"] = config.model_type
    layout = adapter.expert_layout(config)  # how reports name expert neurons (None: a dense model)
    out["experts"] = None if layout is None else asdict(layout)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json(memo, out)
    return out
