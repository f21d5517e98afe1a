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
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from torch import nn

from neuronspec.models.masks import NeuronSet, zeroed


def export_deactivated(model: nn.Module, tokenizer: Any, neurons: NeuronSet, out_dir: str | Path, *,
                       overwrite: bool = False) -> Path:
    """`save_pretrained` of `model` with `neurons` zeroed in the weights, plus the tokenizer and the
    neuron set (``neuronspec_neurons.safetensors``, for provenance; ``neuronspec_neurons.csv``, one row
    per neuron, with its expert and index inside it for a mixture-of-experts ffn)."""
    from neuronspec.models.sites import adapter_for
    from neuronspec.report.neurons import NeuronRow, neuron_rows
    from neuronspec.report.tidy import write_csv

    layout = adapter_for(model.config).expert_layout(model.config)

    def provenance(folder: Path) -> None:
        neurons.save(folder / "neuronspec_neurons.safetensors")
        write_csv(folder / "neuronspec_neurons.csv", neuron_rows(neurons, layout), NeuronRow)

    return write_model_folder(model, tokenizer, out_dir, zeroed(model, neurons), provenance, overwrite=overwrite)


def write_model_folder(model: nn.Module, tokenizer: Any, out_dir: str | Path, modified: AbstractContextManager[Any],
                       provenance: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """`save_pretrained` of `model` inside `modified` (which changes the weights and restores them),
    the tokenizer, and `provenance(folder)`'s file. Written under a temporary name beside `out_dir`
    and renamed when complete, so a failed export leaves no half-written folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        with modified:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        provenance(tmp)
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
