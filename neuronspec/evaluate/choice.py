"""Multiple-choice accuracy by continuation log-likelihood (the lm-evaluation-harness way).

Each choice is scored as the summed log-probability of its tokens after the prompt; the
highest score is the prediction. The prompt runs once per item (its key/value cache is
shared by the choices) and only the positions that predict a choice token go through the
unembedding, so a 4-way item costs about one prompt pass plus four short continuations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from neuronspec.distributed import parallel_map
from neuronspec.evaluate._items import item_field
from neuronspec.evaluate._stats import bootstrap_ratio
from neuronspec.evaluate.logprobs import continuation_logprobs, encode

Normalize = Literal["none", "length", "chars"]


@dataclass
class ChoiceResult:
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    n: int
    predictions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)  # per item, per choice (after normalisation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item read from a local file (shaped like a `Document`)."""

    id: str
    lang: str | None
    text: str
    meta: dict[str, Any]


def load_choice_items(path: str | Path) -> list[ChoiceItem]:
    """Read a jsonl task file: one object per line with `prompt`, `choices`, `label`
    (optional `id`, `lang`); blank lines are skipped. Errors name the file and line."""
    items: list[ChoiceItem] = []
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, choices, label = row["prompt"], row["choices"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: expected a JSON object with prompt, choices, label ({err})") from None
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"{path}:{lineno}: 'choices' must be a non-empty list of strings")
            if not isinstance(label, int) or not 0 <= label < len(choices):
                raise ValueError(f"{path}:{lineno}: 'label' must be an int in [0, {len(choices)}), got {label!r}")
            meta = {k: v for k, v in row.items() if k not in ("id", "lang")}
            items.append(ChoiceItem(str(row.get("id", len(items))), row.get("lang"), prompt, meta))
    return items


def split_continuation(tokenizer: Any, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """(prompt ids with BOS, continuation ids) such that their concatenation is how the
    model would read prompt + continuation.

    Exactly as lm-evaluation-harness does for causal models, so the two score the same tokens:
    trailing spaces of the prompt move into the continuation, the prompt is encoded alone, the
    whole string at once, and the continuation is what the whole has past the prompt's length.
    Where a token of the whole spans the boundary (3 of 32 Chinese next-verse choices with
    Gemma's tokenizer) that slice starts a little inside the continuation; encoding the parts
    separately instead made `choice` and lm-eval disagree on those items. Only a whole no longer
    than the prompt (nothing left to slice) falls back to encoding the continuation alone.
    """
    stripped = prompt.rstrip(" ")
    continuation = prompt[len(stripped) :] + continuation
    whole = encode(tokenizer, stripped + continuation)
    context = encode(tokenizer, stripped)
    if len(whole) > len(context):
        return context, whole[len(context) :]
    return context, encode(tokenizer, continuation, add_special_tokens=False)


def multiple_choice(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    *,
    max_tokens: int = 256,
    normalize: Normalize = "none",
    bootstrap: int = 1000,
    seed: int = 0,
) -> ChoiceResult:
    """Accuracy of picking the most likely continuation, with a 95% item-bootstrap CI.

    `normalize`: "none" sums log-probs; "length" divides by the continuation's token count;
    "chars" by its character count (lm-evaluation-harness's acc_norm). Sequences longer
    than `max_tokens` lose tokens from the left (the prompt), never the continuation's end.
    """
    if normalize not in ("none", "length", "chars"):
        raise ValueError(f"normalize must be 'none', 'length' or 'chars', got {normalize!r}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
    if not items:
        raise ValueError("multiple_choice needs at least one item")
    groups: list[tuple[list[int], list[list[int]]]] = []  # (context, continuations) sharing that context
    owners: list[list[tuple[int, int, str]]] = []  # per group: (item, choice, choice text) of each continuation
    labels: list[int] = []
    sizes: list[int] = []  # choices per item
    for index, item in enumerate(items):
        prompt = str(item_field(item, "prompt", fallback_text=True))
        choices = list(item_field(item, "choices"))
        label = int(item_field(item, "label"))
        if not choices or not 0 <= label < len(choices):
            raise ValueError(f"item {index}: label {label} out of range for {len(choices)} choices")
        labels.append(label)
        sizes.append(len(choices))
        by_context: dict[tuple[int, ...], int] = {}  # truncation can give choices of one item different contexts
        for c, choice in enumerate(choices):
            context, cont = split_continuation(tokenizer, prompt, str(choice))
            if not cont:
                raise ValueError(f"item {index}: choice {c} ({choice!r}) has no tokens")
            ids = (context + cont)[-max_tokens:]
            k = min(len(cont), len(ids) - 1)  # scored tokens: the continuation, or all but the first
            key = tuple(ids[: len(ids) - k])
            if key not in by_context:
                by_context[key] = len(groups)
                groups.append((list(key), []))
                owners.append([])
            groups[by_context[key]][1].append(ids[len(ids) - k :])
            owners[by_context[key]].append((index, c, str(choice)))

    def score(part: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        return [[float(v.double().sum()) for v in values] for values in continuation_logprobs(model, part)]

    # under torch.distributed each rank scores its shard of the groups
    totals = parallel_map(score, groups)
    scores: list[list[float]] = [[0.0] * n for n in sizes]
    for (_, conts), group_owners, group_totals in zip(groups, owners, totals):
        for cont, (index, c, choice), total in zip(conts, group_owners, group_totals):
            if normalize == "length":
                total /= max(len(cont), 1)
            elif normalize == "chars":
                total /= max(len(choice), 1)
            scores[index][c] = total

    predictions = [int(np.argmax(s)) for s in scores]
    correct = np.array([p == y for p, y in zip(predictions, labels)], dtype=np.float64)
    lo, hi = bootstrap_ratio(correct, np.ones_like(correct), resamples=bootstrap, seed=seed)
    return ChoiceResult(
        accuracy=float(correct.mean()),
        ci_low=lo,
        ci_high=hi,
        n=len(labels),
        predictions=predictions,
        labels=labels,
        scores=scores,
    )
