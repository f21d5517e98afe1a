"""Greedy generation scored by ROUGE-L against references and by language fidelity.

Decoding goes through the model's own `generate`, so whatever neuron masks the caller has
activated (forward hooks) apply at every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from neuronspec.distributed import parallel_map
from neuronspec.evaluate._items import item_field, item_id
from neuronspec.evaluate._stats import bootstrap_ratio
from neuronspec.evaluate.fidelity import candidates, canonical, detect, detector
from neuronspec.evaluate.logprobs import encode, model_device, pad_token_id
from neuronspec.evaluate.rouge import rouge_l


@dataclass
class GenerationResult:
    rouge_l: float  # mean ROUGE-L F1 over items
    fidelity: float  # share of outputs detected as the target language
    n: int
    samples: list[dict[str, Any]] = field(default_factory=list)  # id, output, reference, rouge_l, detected
    rouge_l_ci: list[float] | None = None
    fidelity_ci: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _cut(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    end = min((k for k in (text.find(s) for s in stop if s) if k >= 0), default=len(text))
    return text[:end]


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_tokens: int = 256,
    stop: Sequence[str] = (),
) -> list[str]:
    """Greedy continuations of `prompts` (decoded, special tokens removed), input order.

    Prompts are left padded by hand (the tokenizer's padding side is not touched) and
    grouped by length; each is cut to its last `max_tokens` tokens. Outputs end at EOS and
    are cut before the first `stop` string (e.g. a newline, so a base model's next invented
    question does not count as its answer).
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pad = pad_token_id(model, tokenizer)
    eos = _eos_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
        eos_token_id=sorted(eos) or None,
    )
    device = model_device(model)
    encoded = [encode(tokenizer, p)[-max_tokens:] for p in prompts]
    if any(not ids for ids in encoded):
        raise ValueError("a prompt encodes to no tokens (empty prompt and no BOS); cannot generate from it")
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in members)
        ids = torch.full((len(members), width), pad, dtype=torch.long)
        attention = torch.zeros((len(members), width), dtype=torch.long)
        for row, i in enumerate(members):
            n = len(encoded[i])
            ids[row, width - n :] = torch.as_tensor(encoded[i], dtype=torch.long)
            attention[row, width - n :] = 1
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
        for row, i in enumerate(members):
            new = generated[row, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            outputs[i] = _cut(tokenizer.decode(new[:cut], skip_special_tokens=True), stop).strip()
    return outputs


def generation(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    *,
    lang: str,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_tokens: int = 256,
    languages: Iterable[str] | None = None,
    stop: Sequence[str] = (),
    bootstrap: int = 1000,
    seed: int = 0,
) -> GenerationResult:
    """Greedy-decode each item's `meta["prompt"]` (or its text) and score the outputs.

    ROUGE-L F1 compares with `meta["reference"]` (script-aware tokens, see `rouge`);
    fidelity is the share of outputs lingua identifies as `lang` among `languages` (the
    study's languages; default `fidelity.DEFAULT_CANDIDATES`). Empty outputs are not
    faithful. `stop` strings end an output early (see `greedy_generate`). 95% item-bootstrap
    CIs for both when `bootstrap > 0`.
    """
    if not items:
        raise ValueError("generation needs at least one item")
    pool = candidates(lang, languages)
    detector(pool)  # fail fast (missing lingua, unsupported language) before decoding anything
    prompts = [str(item_field(it, "prompt", fallback_text=True)) for it in items]
    references = [str(item_field(it, "reference")) for it in items]
    outputs = parallel_map(  # under torch.distributed each rank decodes its shard of the prompts
        lambda part: greedy_generate(model, tokenizer, part, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     max_tokens=max_tokens, stop=tuple(stop)),
        prompts,
    )
    scores = [rouge_l(out, ref) for out, ref in zip(outputs, references)]
    detected = detect(outputs, pool)
    faithful = [code == canonical(lang) for code in detected]

    ones = np.ones(len(items))
    r_lo, r_hi = bootstrap_ratio(np.array(scores), ones, resamples=bootstrap, seed=seed)
    f_lo, f_hi = bootstrap_ratio(np.array(faithful, dtype=np.float64), ones, resamples=bootstrap, seed=seed)
    samples = [
        {"id": item_id(it, i), "output": out, "reference": ref, "rouge_l": s, "detected": code, "faithful": ok}
        for i, (it, out, ref, s, code, ok) in enumerate(zip(items, outputs, references, scores, detected, faithful))
    ]
    return GenerationResult(
        rouge_l=float(np.mean(scores)),
        fidelity=float(np.mean(faithful)),
        n=len(items),
        samples=samples,
        rouge_l_ci=None if r_lo is None else [r_lo, r_hi],
        fidelity_ci=None if f_lo is None else [f_lo, f_hi],
    )
