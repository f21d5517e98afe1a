"""A fine-tune of selected neurons as data: only the rows/columns that changed.

A :class:`Delta` maps parameter names to (dim, indices, values): ``param.index_select(dim,
indices)`` is replaced by ``values``; for a mixture-of-experts' 3-D expert weights, whose neuron
slices are picked by (expert, row or column) pairs, ``dim`` is a pair of dims and ``indices`` holds
one pair per slice (:func:`read_slices`). It is tiny (proportional to the neurons), saved as
one safetensors file written atomically, and applied to a loaded base model in place
for as long as needed (:func:`apply_delta`), so an enhanced arm costs what the base
model costs and the base is bit-identical afterwards.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from neuronspec.tensorfiles import save_tensors

_FORMAT = "neuronspec.Delta"
_VERSION = "1"


Dims = int | tuple[int, ...]


@dataclass(frozen=True)
class DeltaEntry:
    """``param.index_select(dim, indices) <- values`` (values have the param's shape there); with a
    tuple ``dim``, ``indices`` is [k, len(dim)] and values [k, the param's other dims]
    (:func:`read_slices`)."""

    dim: Dims
    indices: Tensor  # int64 [k] (or [k, len(dim)]), sorted unique
    values: Tensor

    def __post_init__(self) -> None:
        if self.indices.dtype != torch.int64:
            raise ValueError("indices must be int64")
        if isinstance(self.dim, tuple):
            if self.indices.dim() != 2 or self.indices.shape[1] != len(self.dim) or len(set(self.dim)) != len(self.dim):
                raise ValueError(f"indices must be [k, {len(self.dim)}] for dims {self.dim}")
            if self.values.shape[0] != self.indices.shape[0]:
                raise ValueError(f"values have {self.values.shape[0]} slices, indices {self.indices.shape[0]}")
            return
        if self.indices.dim() != 1:
            raise ValueError("indices must be a 1-D int64 tensor")
        if not 0 <= self.dim < self.values.dim():
            raise ValueError(f"dim {self.dim} out of range for values of shape {tuple(self.values.shape)}")
        if self.values.shape[self.dim] != self.indices.numel():
            raise ValueError(f"values have {self.values.shape[self.dim]} slices along dim {self.dim}, "
                             f"indices {self.indices.numel()}")


class Delta:
    """The changed slices of a model, by parameter name, plus free-form string metadata."""

    __slots__ = ("entries", "metadata")

    def __init__(self, entries: Mapping[str, DeltaEntry] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        self.entries: dict[str, DeltaEntry] = dict(sorted((entries or {}).items()))
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Delta({len(self.entries)} tensors, {self.num_values()} values)"

    def num_values(self) -> int:
        return sum(e.values.numel() for e in self.entries.values())

    def nbytes(self) -> int:
        return sum(e.values.numel() * e.values.element_size() + e.indices.numel() * 8 for e in self.entries.values())

    def equal(self, other: Delta) -> bool:
        """Same names, dims, indices and bit-identical values (metadata ignored)."""
        return self.entries.keys() == other.entries.keys() and all(
            a.dim == b.dim and torch.equal(a.indices, b.indices) and a.values.dtype == b.values.dtype
            and torch.equal(a.values, b.values)
            for a, b in ((self.entries[k], other.entries[k]) for k in self.entries))

    # ---- persistence ------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file, written to a temp file in the same folder and renamed."""
        tensors: dict[str, Tensor] = {}
        for name, e in self.entries.items():
            tensors[f"{name}/indices"] = e.indices.detach().cpu().contiguous()
            tensors[f"{name}/values"] = e.values.detach().cpu().contiguous()
        meta = {"format": _FORMAT, "version": _VERSION,
                "dims": json.dumps({n: e.dim for n, e in self.entries.items()}, sort_keys=True),
                "metadata": json.dumps(self.metadata, sort_keys=True, default=str)}
        return save_tensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> Delta:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a saved Delta (format {meta.get('format')!r})")
        dims = json.loads(meta["dims"])
        tensors = load_file(str(path))
        entries = {name: DeltaEntry(tuple(dim) if isinstance(dim, list) else int(dim), tensors[f"{name}/indices"], tensors[f"{name}/values"])
                   for name, dim in dims.items()}
        return cls(entries, json.loads(meta.get("metadata", "{}")))


# ---- application --------------------------------------------------------------------


def _joint(param: Tensor, dims: tuple[int, ...]) -> Tensor:
    """A view of `param` with `dims` moved to the front (writing it writes the parameter)."""
    return param.movedim(dims, tuple(range(len(dims))))


def read_slices(param: Tensor, dim: Dims, indices: Tensor) -> Tensor:
    """The slices of `param` a :class:`DeltaEntry` with (dim, indices) replaces: ``index_select``
    for an int dim; for a tuple, ``param[i0, i1, ...]`` over the rows of `indices` with those dims
    moved to the front (e.g. dims (0, 2) of a [E, H, I] weight: expert e's column j, as [k, H])."""
    if isinstance(dim, tuple):
        return _joint(param, dim)[tuple(indices.t())]
    return param.index_select(dim, indices)


def write_slices(param: Tensor, dim: Dims, indices: Tensor, values: Tensor) -> None:
    """In place: the inverse of :func:`read_slices`."""
    if isinstance(dim, tuple):
        _joint(param, dim).index_put_(tuple(indices.t()), values)
    else:
        param.index_copy_(dim, indices, values)


def _expected_shape(shape: list[int], dim: Dims, k: int) -> list[int]:
    if isinstance(dim, tuple):
        return [k] + [n for d, n in enumerate(shape) if d not in dim]
    return [*shape[:dim], k, *shape[dim + 1:]]


def _targets(model: nn.Module, delta: Delta) -> list[tuple[Tensor, DeltaEntry]]:
    params = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for name, e in delta.entries.items():
        if name not in params:
            raise KeyError(f"delta names {name!r}, which this model does not have")
        p = params[name]
        dims = e.dim if isinstance(e.dim, tuple) else (e.dim,)
        if max(dims) >= p.dim():
            raise ValueError(f"{name}: delta dims {e.dim} out of range for parameter {tuple(p.shape)}")
        if list(e.values.shape) != _expected_shape(list(p.shape), e.dim, e.indices.shape[0]):
            raise ValueError(f"{name}: delta values {tuple(e.values.shape)} do not fit parameter {tuple(p.shape)} "
                             f"along dim {e.dim}")
        cols = e.indices.reshape(e.indices.shape[0], len(dims))
        for c, d in enumerate(dims):
            if cols.numel() and (int(cols[:, c].min()) < 0 or int(cols[:, c].max()) >= p.shape[d]):
                raise ValueError(f"{name}: delta index out of range for size {p.shape[d]} along dim {d}")
        out.append((p, e))
    return out


def write_delta(model: nn.Module, delta: Delta) -> list[tuple[Tensor, Dims, Tensor, Tensor]]:
    """Write the delta into `model` in place; return (param, dim, indices, originals) to undo it."""
    undo = []
    with torch.no_grad():
        for p, e in _targets(model, delta):
            idx = e.indices.to(p.device)
            undo.append((p, e.dim, idx, read_slices(p, e.dim, idx).clone()))
            write_slices(p, e.dim, idx, e.values.to(device=p.device, dtype=p.dtype))
    return undo


def _undo(undo: list[tuple[Tensor, Dims, Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for p, dim, idx, original in reversed(undo):
            write_slices(p, dim, idx, original)


@contextmanager
def apply_delta(model: nn.Module, delta: Delta) -> Iterator[nn.Module]:
    """Inside the block `model` carries the delta; on exit (also on error) the original
    slices are written back, so the model is bit-identical to before."""
    undo = write_delta(model, delta)
    try:
        yield model
    finally:
        _undo(undo)


def merged_copy(model: nn.Module, delta: Delta) -> nn.Module:
    """A deep copy of `model` with the delta written in (the original is untouched)."""
    clone = copy.deepcopy(model)
    write_delta(clone, delta)
    return clone


def export_model(model: nn.Module, tokenizer: Any, delta: Delta, out_dir: str | Path, *,
                 overwrite: bool = False) -> Path:
    """A full Hugging Face folder (``save_pretrained``) of `model` with the delta applied; `model`
    itself is restored bit-identically. The delta is included as ``neuronspec_delta.safetensors``
    for provenance."""
    from neuronspec.models.export import write_model_folder

    return write_model_folder(model, tokenizer, out_dir, apply_delta(model, delta),
                              lambda folder: delta.save(folder / "neuronspec_delta.safetensors"), overwrite=overwrite)
