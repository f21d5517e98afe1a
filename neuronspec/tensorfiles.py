"""Writing safetensors files atomically: a temp file in the same folder, then a rename,
so a reader never sees half a file (neuron sets, deltas) — and byte-identical for identical
tensors and metadata, so the store's content digests (neuronspec.plan.content) tell equal
results apart from different ones."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

from torch import Tensor


def canonical_bytes(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: safetensors writes the metadata map
    in a hash order that changes from call to call. The header keeps its length (same keys and
    values, compact JSON, space padding), so the data offsets stay valid."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # never for safetensors' own compact header; refuse rather than corrupt
        raise ValueError(f"safetensors header re-encodes to {len(text)} bytes, more than its {size}")
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(canonical_bytes(save(tensors, metadata=metadata)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
