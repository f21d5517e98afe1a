"""A deactivation arm as an ordinary Hugging Face model folder, for other harnesses.

Zeroing the weight slices a neuron owns (its row of the up/gate or Q/K/V projection, with
bias, and its column of the down or output projection — `Adapter.weight_slices`) switches
it off for every input, exactly as the hooks of `masks.deactivate` do. The slices are
zeroed in place for the save and written back afterwards, so no second copy of the model
is held and the loaded model is bit-identical once the folder is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronspec.models.masks import NeuronSet, check_fits
from neuronspec.models.sites import adapter_for


@contextmanager
def zeroed(model: nn.Module, neurons: NeuronSet) -> Iterator[nn.Module]:
    """Inside the block the neurons' weight slices are zero; on exit (also on error) they are restored."""
    adapter = adapter_for(model)
    check_fits(neurons, adapter.dims(model.config))
    undo: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for site, layer, idx in neurons.items():
                for sl in adapter.weight_slices(model, layer, site):
                    coords = sl.index_fn(idx).to(sl.param.device)
                    undo.append((sl.param, sl.dim, coords, sl.param.index_select(sl.dim, coords)))
                    sl.param.index_fill_(sl.dim, coords, 0.0)
        yield model
    finally:
        with torch.no_grad():
            for param, dim, coords, original in reversed(undo):  # reversed: slices of one tensor may overlap
                param.index_copy_(dim, coords, original)


def export_deactivated(model: nn.Module, tokenizer: Any, neurons: NeuronSet, out_dir: str | Path, *,
                       overwrite: bool = False) -> Path:
    """`save_pretrained` of `model` with `neurons` zeroed in the weights, plus the tokenizer and the
    neuron set (``neuronspec_neurons.safetensors``, for provenance). Written under a temporary
    name beside `out_dir` and renamed when complete."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        with zeroed(model, neurons):
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        neurons.save(tmp / "neuronspec_neurons.safetensors")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
