"""Sharing Matters categories on a hand-made activation tensor."""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.sharing import (
    CATEGORIES,
    categorize,
    category_frequency,
    category_shares,
    plot_shares,
    sharing,
)

# 3 languages × 2 items × (2 layers × 3 neurons); columns: layer 0 = 0..2, layer 1 = 3..5
EN = torch.tensor([[1.0, 1.0, 0.0, 0.3, -1.0, 0.0],
                   [1.0, 0.0, 0.0, 0.3, 0.0, 0.2]])
ZH = torch.tensor([[1.0, 1.0, 0.0, 0.0, -1.0, 0.0],
                   [1.0, 0.0, 0.0, 0.3, 0.0, 0.2]])
FR = torch.tensor([[1.0, 0.0, 0.0, 0.0, -1.0, 0.0],
                   [0.5, 0.0, 2.0, 0.3, 0.0, 0.2]])
# at τ = 0, per item (hand-counted active languages):
#   item 0: [3, 2, 0, 1, 0, 0] -> all, partial, none, specific(en), none, none
#   item 1: [3, 0, 1, 3, 0, 3] -> all, none, specific(fr), all, none, all
EXPECTED = torch.tensor([[0, 1, 3, 2, 3, 3], [0, 3, 2, 0, 3, 0]], dtype=torch.int8)


def _direct_category(counts: int, n: int) -> str:
    return "all_shared" if counts == n else "non_activated" if counts == 0 else "specific" if counts == 1 else "partial_shared"


def test_categories_by_hand() -> None:
    acts = torch.stack([EN, ZH, FR])
    assert torch.equal(categorize(acts, 0.0), EXPECTED)
    shares = category_shares(acts, num_layers=2, tau=0.0)
    # layer 0: item0 {all, partial, none}, item1 {all, none, specific} -> all 2/6, partial 1/6, specific 1/6, none 2/6
    assert shares["per_layer"]["all_shared"][0] == pytest.approx(2 / 6)
    assert shares["per_layer"]["partial_shared"][0] == pytest.approx(1 / 6)
    assert shares["per_layer"]["specific"][0] == pytest.approx(1 / 6)
    # layer 1: item0 {specific, none, none}, item1 {all, none, all}
    assert shares["per_layer"]["all_shared"][1] == pytest.approx(2 / 6)
    assert shares["per_layer"]["non_activated"][1] == pytest.approx(3 / 6)
    assert sum(shares["overall"].values()) == pytest.approx(1.0)
    assert shares["overall"]["all_shared"] == pytest.approx(4 / 12)


def test_against_direct_definition_with_threshold_sweep() -> None:
    torch.manual_seed(0)
    acts = torch.randn(4, 7, 2 * 5)
    for tau in (0.0, 0.3):
        freq, spec = category_frequency(acts, tau)
        for d in range(acts.shape[2]):
            for cat_i, cat in enumerate(CATEGORIES):
                direct = sum(_direct_category(int((acts[:, it, d] > tau).sum()), 4) == cat for it in range(7))
                assert int(freq[cat_i, d]) == direct
            for l in range(4):
                only = sum(bool(acts[l, it, d] > tau) and int((acts[:, it, d] > tau).sum()) == 1 for it in range(7))
                assert int(spec[l, d]) == only


def test_sets_and_result(tmp_path) -> None:
    res = sharing({"en": EN, "zh": ZH, "fr": FR}, num_layers=2, taus=(0.0, 0.25), min_fraction=1.0)
    assert res.all_shared.to_dict() == {"ffn": {0: [0]}}  # all-shared in both items: only neuron 0
    half = sharing({"en": EN, "zh": ZH, "fr": FR}, num_layers=2, min_fraction=0.5)
    assert half.all_shared.to_dict() == {"ffn": {0: [0], 1: [0, 2]}}
    assert half.specific["en"].to_dict() == {"ffn": {1: [0]}} and half.specific["fr"].to_dict() == {"ffn": {0: [2]}}
    assert not half.specific["zh"]
    # τ = 0.25: neuron 1 of layer 1 (0.3 everywhere in item 1, only en in item 0) as at τ = 0; 0.2s drop out
    assert res.shares["0.25"]["per_layer"]["all_shared"][1] == pytest.approx(1 / 6)
    assert set(res.to_json()["shares"]) == {"0.0", "0.25"}
    assert plot_shares(res.shares["0.0"], tmp_path / "s.png").stat().st_size > 0
    with pytest.raises(ValueError, match="languages >= 2"):
        sharing({"en": EN}, num_layers=2)
