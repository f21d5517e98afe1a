"""Settings of a neuron-restricted fine-tune (MWork "enhancement"; docs/methods.md, "Enhancement").

Defaults are the reference enhancement settings: lr 2e-6, one epoch, effective batch 32
documents, sequence length 512, max_grad_norm 0.3, cosine schedule with 5% warm-up.
The optimiser is AdamW with transformers' Trainer defaults (betas 0.9/0.999, eps 1e-8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class EnhanceSettings:
    """How to fine-tune the selected neurons.

    ``effective_batch`` documents per optimiser step, run ``micro_batch`` at a time with
    gradient accumulation; each document is truncated to ``seq_len`` tokens (BOS included).
    The loss of a step is the mean next-token NLL over all real tokens of its documents.
    """

    lr: float = 2e-6
    epochs: int = 1
    effective_batch: int = 32
    micro_batch: int = 4
    seq_len: int = 512
    max_grad_norm: float | None = 0.3
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        for name in ("epochs", "effective_batch", "micro_batch"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            problems.append(f"seq_len must be >= 2 (one prediction needs two tokens), got {self.seq_len}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            problems.append("adam betas must be in [0, 1) and adam_eps > 0")
        if problems:
            raise ValueError("invalid EnhanceSettings: " + "; ".join(problems))

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimiser step (the last step of an epoch may have fewer)."""
        return -(-self.effective_batch // self.micro_batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnhanceSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EnhanceSettings field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def lr_at(settings: EnhanceSettings, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based) out of `total_steps`.

    Same formulas as transformers' ``get_{cosine,linear,constant}_schedule_with_warmup``
    with ``num_warmup_steps = ceil(warmup_ratio * total_steps)`` (the Trainer's rule), so
    results are comparable with the reference code. As there, step 0 of a warm-up runs at
    lr 0.
    """
    import math

    warmup = math.ceil(settings.warmup_ratio * total_steps)
    if step < warmup:
        return settings.lr * step / max(1, warmup)
    if settings.schedule == "constant":
        return settings.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    if settings.schedule == "linear":
        return settings.lr * max(0.0, 1.0 - progress)
    return settings.lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
