"""Per-token log-probabilities without materialising full-vocabulary logits.

Gemma 3 270M has a 262,144-token vocabulary: float32 logits for a batch of 8x256 tokens
are 2 GB. We run the base decoder (so any mask hooks inside it fire), keep only the hidden
states at positions that predict a real token, and push those through the unembedding a
chunk of tokens at a time: peak extra memory is `chunk_tokens x vocab` floats. The result
equals `cross_entropy` of the full model's logits (tests check all six tiny archs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from neuronspec import progress
from neuronspec.models.forward import can_pack, iter_batches, iter_packed

# Logits per chunk: 2**25 floats = 128 MB in float32, i.e. 128 tokens at Gemma 3's 262k vocab.
_CHUNK_ELEMENTS = 1 << 25


def encode(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`, with BOS exactly as the tokenizer adds it (none for GPT-2)."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def pad_token_id(model: torch.nn.Module, tokenizer: Any = None) -> int:
    """The id used for padding: the tokenizer's, else the config's, else EOS, else 0.

    Padding positions are masked out, so the value only has to be a valid id.
    """
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "config", None), "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
    ):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int):
            return candidate
    return 0


def model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs must go (the device of the first parameter)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _text_config(model: torch.nn.Module) -> Any:
    config = model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def finalize_logits(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Apply the output transforms the model's forward applies after `lm_head`.

    Gemma 2/3: `final_logit_softcapping` (cap * tanh(logits / cap)); Cohere: `logit_scale`
    multiplies; Granite: `logits_scaling` divides. Anything else leaves logits untouched.
    """
    config = _text_config(model)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 1:
        logits = logits * scale
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and divisor != 1:
        logits = logits / divisor
    return logits


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The base decoder (embeddings + blocks + final norm) whose output feeds `lm_head`."""
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    if decoder is None or decoder is model:
        decoder = getattr(model, "base_model", None)
    if decoder is None or decoder is model:
        raise TypeError(f"{type(model).__name__} exposes no base decoder (get_decoder / base_model)")
    return decoder


def target_logprobs(
    model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, *, chunk_tokens: int | None = None
) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for hidden [N, d] and targets [N], unembedded chunk-wise.

    log_softmax runs in float32 whatever the model dtype, so bf16 models still give
    comparable NLLs.
    """
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (lm_head)")
    n = hidden.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    if n == 0:
        return out
    if chunk_tokens is None:
        vocab = int(getattr(unembed, "out_features", 0) or unembed.weight.shape[0])
        chunk_tokens = max(1, _CHUNK_ELEMENTS // max(1, vocab))
    for start in range(0, n, chunk_tokens):
        stop = min(n, start + chunk_tokens)
        logits = finalize_logits(model, unembed(hidden[start:stop])).float()  # [c, vocab]
        logp = torch.log_softmax(logits, dim=-1)
        out[start:stop] = logp.gather(1, targets[start:stop, None]).squeeze(1)
        del logits, logp
    return out


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    pad_id: int = 0,
    chunk_tokens: int | None = None,
    batch_tokens: int | None = None,
    reduce: Literal["none", "sum"] = "none",
) -> list[torch.Tensor]:
    """For each sequence of n ids, the n-1 values log p(ids[t] | ids[:t]), t = 1..n-1.

    Returned in input order as float32 CPU tensors; with reduce="sum", each sequence's sum
    as a 0-d float64 tensor, summed on the model's device, so no per-token values reach the
    host (what perplexity needs over large corpora). Where the architecture can pack
    (`forward.can_pack`), sequences share rows (`forward.iter_packed`: at most `batch_size`
    rows as wide as the longest sequence, and `batch_tokens` when set) and no padding is
    computed; otherwise batches are length-sorted and right padded. Either way padding
    never enters a prediction nor the output.
    """
    decoder = decoder_of(model)
    device = model_device(model)
    empty = torch.zeros((), dtype=torch.float64) if reduce == "sum" else torch.empty(0, dtype=torch.float32)
    results: list[torch.Tensor] = [empty for _ in sequences]
    lengths = [len(s) for s in sequences]
    scorable = [i for i, n in enumerate(lengths) if n >= 2]
    make = iter_packed if can_pack(model) else iter_batches
    for batch in make([sequences[i] for i in scorable], batch_size=batch_size, pad_id=pad_id, token_budget=batch_tokens):
        b = batch.to(device)
        members = [scorable[k] for k in b.index]
        inputs = dict(attention_mask=None, position_ids=b.position_ids) if b.packed else dict(attention_mask=b.attention_mask)
        hidden = decoder(input_ids=b.input_ids, **inputs, use_cache=False).last_hidden_state
        owners = b.owners()
        predicts = (owners[:, 1:] == owners[:, :-1]) & (owners[:, 1:] >= 0)  # position t-1 predicts token t of its sequence
        # row-major order visits the sequences in `b.index` order, each one's tokens in order
        flat = target_logprobs(model, hidden[:, :-1][predicts], b.input_ids[:, 1:][predicts], chunk_tokens=chunk_tokens)
        parts = flat.split([lengths[i] - 1 for i in members])
        if reduce == "sum":
            parts = torch.stack([v.double().sum() for v in parts]).cpu().unbind()
        for i, values in zip(members, parts):
            results[i] = values.cpu()
        progress.advance(len(members), tokens=sum(lengths[i] for i in members))
    return results


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    chunk_tokens: int | None = None,
) -> list[list[torch.Tensor]]:
    """For each (context, continuations) group: per continuation c, the len(c) values
    log p(c[t] | context + c[:t]), as float32 CPU tensors.

    Why not `token_logprobs` over context + c: that runs the shared context once per
    continuation and unembeds every context position, while only the positions predicting
    a continuation token are needed (the unembedding is ~60 % of Gemma 3 270M's compute).
    Here the context runs once with a key/value cache, the cache is repeated for the
    continuations that have more than one token, those run as one right-padded batch, and
    only the last context position and the continuation positions are unembedded.
    """
    decoder = decoder_of(model)
    device = model_device(model)
    results: list[list[torch.Tensor]] = []
    for context, continuations in groups:
        if not context or any(len(c) == 0 for c in continuations):
            raise ValueError("continuation_logprobs needs a non-empty context and non-empty continuations")
        ctx = torch.as_tensor([list(context)], dtype=torch.long, device=device)
        first = decoder(input_ids=ctx, attention_mask=torch.ones_like(ctx), use_cache=True)
        last = first.last_hidden_state[0, -1:]  # [1, d]: predicts every continuation's first token
        hidden = [last.expand(len(continuations), -1)]
        targets = [torch.as_tensor([c[0] for c in continuations], dtype=torch.long, device=device)]
        longer = [i for i, c in enumerate(continuations) if len(c) > 1]
        if longer:
            width = max(len(continuations[i]) for i in longer) - 1  # the last token is only ever a target
            ids = torch.zeros((len(longer), width), dtype=torch.long)
            attention = torch.zeros((len(longer), ctx.shape[1] + width), dtype=torch.long)
            attention[:, : ctx.shape[1]] = 1
            for row, i in enumerate(longer):
                c = continuations[i]
                ids[row, : len(c) - 1] = torch.as_tensor(list(c[:-1]), dtype=torch.long)
                attention[row, ctx.shape[1] : ctx.shape[1] + len(c) - 1] = 1
            cache = first.cache
            cache.batch_repeat_interleave(len(longer))
            rest = decoder(input_ids=ids.to(device), attention_mask=attention.to(device), cache=cache,
                           use_cache=True).last_hidden_state
            real = attention[:, ctx.shape[1] :].bool().to(device)  # right padding never becomes a prediction
            hidden.append(rest[real])
            targets.append(torch.cat([torch.as_tensor(list(continuations[i][1:]), dtype=torch.long) for i in longer]).to(device))
        flat = target_logprobs(model, torch.cat(hidden), torch.cat(targets), chunk_tokens=chunk_tokens).cpu()
        firsts, later = flat[: len(continuations)], flat[len(continuations) :].split([len(continuations[i]) - 1 for i in longer])
        rests = dict(zip(longer, later))
        results.append([torch.cat([firsts[i : i + 1], rests.get(i, firsts[:0])]) for i in range(len(continuations))])
        progress.advance(1, tokens=len(context) + sum(len(c) for c in continuations))
    return results


def text_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_tokens: int = 256,
    chunk_tokens: int | None = None,
    batch_tokens: int | None = None,
) -> list[torch.Tensor]:
    """`token_logprobs` of each text, tokenised with the tokenizer's BOS and truncated to
    its first `max_tokens` tokens."""
    sequences = [encode(tokenizer, t)[:max_tokens] for t in texts]
    return token_logprobs(model, sequences, batch_size=batch_size, pad_id=pad_token_id(model, tokenizer),
                          chunk_tokens=chunk_tokens, batch_tokens=batch_tokens)
