"""Neuron-restricted fine-tuning ("enhancement", MWork): train only selected neurons.

``train_neurons`` returns a :class:`Delta` (only the changed rows/columns); apply it with
``apply_delta`` (restored on exit), ``merged_copy`` or ``export_model``.
"""

from .delta import (
    Delta,
    DeltaEntry,
    apply_delta,
    export_model,
    merged_copy,
    write_delta,
)
from .settings import SCHEDULES, EnhanceSettings, lr_at
from .train import (
    EnhanceResult,
    StepInfo,
    full_adam_state_bytes,
    nll_sum,
    optimizer_state_bytes,
    selected_slices,
    train_neurons,
)

__all__ = [
    "SCHEDULES", "Delta", "DeltaEntry", "EnhanceResult", "EnhanceSettings", "StepInfo", "apply_delta",
    "export_model", "full_adam_state_bytes", "lr_at", "merged_copy", "nll_sum", "optimizer_state_bytes",
    "selected_slices", "train_neurons", "write_delta",
]
