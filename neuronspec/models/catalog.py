"""Embedded model names and their weight digests — importable without torch.

Planning needs a model's identity for cache keys before (and, when everything is cached,
instead of) loading it; for embedded models that identity is the pinned GGUF sha256.
"""

from __future__ import annotations

EMBEDDED_SHA256: dict[str, str] = {
    "gemma-3-270m": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "smollm2-135m": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_SHA256


def embedded_digest(name: str) -> str:
    return EMBEDDED_SHA256[name]
