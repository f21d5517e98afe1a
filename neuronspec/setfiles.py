"""Neuron sets found elsewhere (TransformerLens, nnsight, a notebook) read from a file, checked
against the model's dims. No torch: `validate` and `plan` read them too.

Two formats, told apart by the file's extension:

* ``.json`` — ``{"SITE": {"LAYER": [INDEX, ...]}}``: sites are ffn, attn.q, attn.k, attn.v,
  attn.o; layers decimal strings (JSON keys); indices integers in [0, the site's width).
  ``{"ffn": {"3": [17, 2048]}, "attn.q": {"0": [5]}}`` is 2 ffn neurons of layer 3 and one
  query neuron of layer 0. Repeats count once.
* ``.safetensors`` — one 1-D tensor per site and layer named ``SITE/LAYER``: either integer
  indices (any integer dtype) or a boolean mask exactly as long as the site's width (True = in
  the set). A file written by ``NeuronSet.save`` (``Results.neuron_set(...).save(path)``) is one.

A file may be at most 64 MiB; a problem names the file and the field (``ffn.3[1]``) at fault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neuronspec.fileio import TextFileError, read_small_bytes
from neuronspec.spec.fields import SITES

MAX_SET_BYTES = 64 << 20
FORMATS = (".json", ".safetensors")


def site_widths(dims: Mapping[str, int]) -> dict[str, int]:
    """Neurons per layer of each site from a plan's dims (as models.sites.site_width, without torch)."""
    q, kv = dims["heads"] * dims["head_dim"], dims["kv_heads"] * dims["head_dim"]
    return {"ffn": dims["intermediate"], "attn.q": q, "attn.o": q, "attn.k": kv, "attn.v": kv}


class SetFileError(ValueError):
    """A set file that cannot be used: the file, the field at fault, and why."""

    def __init__(self, path: str | Path, field: str | None, message: str) -> None:
        super().__init__(f"{path}: {field + ': ' if field else ''}{message}")
        self.path, self.field, self.message = str(path), field, message


@dataclass(frozen=True)
class SetFile:
    """A set read from a file: site → layer → sorted distinct indices, and the file's digest."""

    neurons: dict[str, dict[int, list[int]]]
    sha256: str

    def count(self) -> int:
        return sum(len(v) for layers in self.neurons.values() for v in layers.values())


def read_set_file(path: str | Path, dims: Mapping[str, int]) -> SetFile:
    """Read and check a set file (see the module docstring); raises SetFileError."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise SetFileError(path, None, f"unknown format {path.suffix or '(no extension)'!r}: use .json or .safetensors")
    try:
        data = read_small_bytes(path, MAX_SET_BYTES)
    except TextFileError as exc:
        raise SetFileError(path, None, exc.message) from None
    raw = _json_entries(path, data) if path.suffix == ".json" else _safetensors_entries(path, data, dims)
    widths, layers = site_widths(dims), dims["num_layers"]
    neurons: dict[str, dict[int, list[int]]] = {}
    for (site, layer_key), indices in raw.items():
        field = f"{site}.{layer_key}"
        if site not in SITES:
            raise SetFileError(path, site, f"not a site (sites: {', '.join(SITES)})")
        if not layer_key.isdigit() or (layer_key != "0" and layer_key.startswith("0")):
            raise SetFileError(path, field, f"layer {layer_key!r} is not a layer number")
        if int(layer_key) >= layers:
            raise SetFileError(path, field, f"layer {layer_key} out of range: the model has {layers} layers (0..{layers - 1})")
        for j, i in enumerate(indices):
            if not 0 <= i < widths[site]:
                raise SetFileError(path, f"{field}[{j}]", f"index {i} out of range: {site} has {widths[site]} neurons per layer")
        if indices:
            neurons.setdefault(site, {})[int(layer_key)] = sorted(set(indices))
    return SetFile({s: dict(sorted(neurons[s].items())) for s in SITES if s in neurons}, hashlib.sha256(data).hexdigest())


def _json_entries(path: Path, data: bytes) -> dict[tuple[str, str], list[int]]:
    try:
        tree = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SetFileError(path, None, f"not JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise SetFileError(path, None, 'expected an object {"SITE": {"LAYER": [INDEX, ...]}}')
    out: dict[tuple[str, str], list[int]] = {}
    for site, layers in tree.items():
        if not isinstance(layers, dict):
            raise SetFileError(path, site, 'expected an object {"LAYER": [INDEX, ...]}')
        for layer, indices in layers.items():
            field = f"{site}.{layer}"
            if not isinstance(indices, list):
                raise SetFileError(path, field, "expected a list of neuron indices")
            bad = next((j for j, i in enumerate(indices) if type(i) is not int), None)  # bool is not an index
            if bad is not None:
                raise SetFileError(path, f"{field}[{bad}]", f"{indices[bad]!r} is not an integer index")
            out[(site, layer)] = indices
    return out


def _safetensors_entries(path: Path, data: bytes, dims: Mapping[str, int]) -> dict[tuple[str, str], list[int]]:
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise SetFileError(path, None, f"not a safetensors file: {exc}") from None
    widths = site_widths(dims)
    out: dict[tuple[str, str], list[int]] = {}
    for key, t in tensors.items():
        site, _, layer = key.rpartition("/")
        if not site:
            raise SetFileError(path, key, "tensor names are SITE/LAYER, e.g. ffn/3")
        if t.ndim != 1:
            raise SetFileError(path, key, f"expected a 1-D tensor, got shape {list(t.shape)}")
        if t.dtype == np.bool_:
            if site in widths and t.shape[0] != widths[site]:
                raise SetFileError(path, key, f"a boolean mask of {t.shape[0]} entries; {site} has {widths[site]} neurons per layer")
            out[(site, layer)] = np.flatnonzero(t).tolist()
        elif np.issubdtype(t.dtype, np.integer):
            out[(site, layer)] = [int(i) for i in t.tolist()]
        else:
            raise SetFileError(path, key, f"dtype {t.dtype} is neither integer indices nor a boolean mask")
    return out
