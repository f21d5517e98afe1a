"""Evaluators: perplexity, multiple-choice log-likelihood, generation (ROUGE-L, fidelity).

Each is a pure function `(model, tokenizer, items, **options) -> Result` that calls the
model's own modules, so neuron masks applied as forward hooks take effect. Results are
dataclasses with `to_dict()` (JSON-ready) and are deterministic for a seed.
"""

from neuronspec.evaluate.choice import (
    ChoiceItem,
    ChoiceResult,
    load_choice_items,
    multiple_choice,
)
from neuronspec.evaluate.fidelity import fidelity
from neuronspec.evaluate.generation import GenerationResult, generation
from neuronspec.evaluate.logprobs import continuation_logprobs, text_logprobs, token_logprobs
from neuronspec.evaluate.perplexity import PerplexityResult, perplexity, ppl_increase
from neuronspec.evaluate.registry import EVALUATORS, evaluator_options, run_evaluator
from neuronspec.evaluate.rouge import rouge_l

__all__ = [
    "EVALUATORS",
    "ChoiceItem",
    "ChoiceResult",
    "GenerationResult",
    "PerplexityResult",
    "continuation_logprobs",
    "evaluator_options",
    "fidelity",
    "generation",
    "load_choice_items",
    "multiple_choice",
    "perplexity",
    "ppl_increase",
    "rouge_l",
    "run_evaluator",
    "text_logprobs",
    "token_logprobs",
]
