"""Statistics are accumulated in float32/float64 whatever the model's dtype."""

from __future__ import annotations

import torch

from neuronspec.methods.plnd import plnd_statistics
from neuronspec.models.forward import iter_batches
from neuronspec.models.tiny import tiny_model


def test_bfloat16_model_gives_float_statistics_close_to_float32() -> None:
    torch.manual_seed(0)
    encodings = [torch.randint(3, 90, (n,)).tolist() for n in (12, 9, 16, 7)]
    model = tiny_model("llama")
    sites = ["ffn", "attn.v", "attn.o", "attn.q"]
    full = plnd_statistics(model, iter_batches(encodings, batch_size=2, pad_id=0), sites)
    half = plnd_statistics(model.to(torch.bfloat16), iter_batches(encodings, batch_size=2, pad_id=0), sites)
    for site in sites:
        assert half[site].min.dtype == torch.float32 and half[site].sum.dtype == torch.float64
        assert half[site].min.device.type == "cpu"
        # bfloat16 weights and activations (8 bits of mantissa) perturb each score by about 1 %
        rel = (half[site].sum - full[site].sum).abs() / full[site].sum.abs().clamp_min(1e-12)
        assert float(rel.median()) < 0.05, site
        assert not torch.equal(half[site].sum, full[site].sum)  # really computed in bfloat16
