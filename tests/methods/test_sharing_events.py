"""Sharing Matters' activation events read what they name.

The reference notebooks threshold the MLP nonlinearity's output at the prompt's last token.
Expectations here come from each document run alone with the gate projection's output hooked
and the config's activation function applied by hand (transformers' ACT2FN), not from the
activation-statistics hooks under test.
"""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN

from neuronspec.methods.activations import activation_statistics
from neuronspec.models.forward import iter_batches, iter_packed
from neuronspec.models.tiny import tiny_model

DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15], [1, 9, 9, 30, 31, 32, 5]]


def _by_hand(model, arch: str, doc: list[int]) -> torch.Tensor:  # noqa: ANN001
    """act(gate·x) of one document, [layers, T, I], from the gate (fc1) output and the config's activation."""
    cfg = model.config
    name = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None) or cfg.activation_function
    act = ACT2FN[name]
    width = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * cfg.hidden_size
    layers = model.transformer.h if arch == "gpt2" else model.model.layers
    out: list[torch.Tensor] = []
    handles = []
    for layer in layers:
        mlp = layer.mlp
        gate = {"gpt2": getattr(mlp, "c_fc", None), "phi3": getattr(mlp, "gate_up_proj", None)}.get(arch) or getattr(mlp, "gate_proj", None)
        pick = (lambda z: z[..., :width]) if arch == "phi3" else (lambda z: z)  # Phi-3 fuses [gate | up]
        handles.append(gate.register_forward_hook(lambda m, a, z, pick=pick: out.append(act(pick(z.detach().float()))[0])))
    try:
        with torch.no_grad():
            model(torch.tensor([doc]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "phi3", "gpt2"])
@pytest.mark.parametrize("packed", [False, True])
def test_act_poolings_are_the_nonlinearity_output(arch: str, packed: bool) -> None:
    model = tiny_model(arch)
    make = iter_packed if packed else iter_batches
    stats = activation_statistics(model, make(DOCS, batch_size=3, pad_id=0), poolings=["act_last", "act_mean", "mean"],
                                  thresholds=())
    last, mean = stats.per_layer("act_last"), stats.per_layer("act_mean")
    for d, doc in enumerate(DOCS):
        want = _by_hand(model, arch, doc)  # [layers, T, I]
        torch.testing.assert_close(last[d], want[:, -1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mean[d], want[:, 1:].mean(1), rtol=1e-4, atol=1e-5)  # the first token is not counted
    if arch == "gpt2":  # a plain MLP: the neuron is the nonlinearity's output
        torch.testing.assert_close(mean, stats.per_layer("mean"))
    else:  # a gated one: the neuron act(gate)·up differs from the gate's activation
        assert not torch.allclose(mean, stats.per_layer("mean"))


def test_each_event_reads_its_own_pooling_and_changes_the_key(tmp_path, tiny_model_dir, monkeypatch) -> None:  # noqa: ANN001
    from tiny_studies import make_parallel_corpus

    from neuronspec.plan.compile import compile_study
    from neuronspec.spec import load_study

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    corpus = make_parallel_corpus(tmp_path / "p.jsonl")
    keys, poolings = {}, {}
    for event, pooling in (("reference", "act_last"), ("gate", "act_mean"), ("magnitude", "mean_abs"), ("signed_mean", "mean")):
        path = tmp_path / f"{event}.yaml"
        path.write_text(f"name: ev\nmodel: {{id: {tiny_model_dir}}}\nlanguages: [en, fr, de]\n"
                        f"corpora:\n  parallel: {{source: {corpus}, docs_per_language: 4, max_tokens: 32}}\n"
                        f"detect:\n  sharing: {{corpus: parallel, event: {event}, thresholds: [0.1]}}\n")
        plan = compile_study(load_study(path))
        poolings[event] = plan.stages["stats/act/parallel/en"].spec.poolings
        keys[event] = (plan.stages["stats/act/parallel/en"].key, plan.stages["select/sharing"].key)
        assert poolings[event] == [pooling]
    assert len({k for pair in keys.values() for k in pair}) == 8  # no event reuses another's statistics or selection
