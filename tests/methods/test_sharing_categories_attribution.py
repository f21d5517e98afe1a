"""Per-item categories of a subset of items, and the |attribution| mass of each category."""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.sharing import (
    CATEGORIES,
    attribution_by_category,
    categorize,
    category_frequency,
    item_categories,
    plot_attribution,
)


def test_item_categories_are_categorize_on_the_chosen_items() -> None:
    torch.manual_seed(0)
    acts = {lang: torch.randn(6, 2 * 4) for lang in ("en", "zh", "fr")}
    stacked = torch.stack(list(acts.values()))
    codes = item_categories(acts, [1, 4], tau=0.2)
    assert codes.shape == (2, 8) and codes.dtype == torch.int8
    assert torch.equal(codes, categorize(stacked[:, [1, 4]], 0.2))
    # the same per-item categories that category_frequency counts
    freq, _ = category_frequency(stacked, 0.2)
    every = item_categories(acts, tau=0.2)
    for c in range(len(CATEGORIES)):
        assert torch.equal((every == c).sum(0), freq[c])


def test_category_shares_by_hand() -> None:
    # 2 items, 2 attributed layers (of 3) × 2 neurons; categories per (item, layer, neuron):
    codes = torch.tensor([[0, 1, 2, 3, 0, 0],      # item 0: layer 0 all/partial, layer 1 specific/none, layer 2 all/all
                          [3, 3, 0, 2, 1, 1]], dtype=torch.int8)
    # attributions to layers [1, 2] only; one language
    attr = torch.tensor([[[1.0, -3.0], [2.0, 2.0]],
                         [[-4.0, 0.5], [1.0, 1.5]]])
    out = attribution_by_category(codes, attr, [1, 2])
    total = 1 + 3 + 2 + 2 + 4 + 0.5 + 1 + 1.5  # 15
    # layer 1: item 0 -> specific 1, none 3; item 1 -> all 4, specific 0.5; layer 2: item 0 all 2+2, item 1 partial 1+1.5
    assert out["overall"]["all_shared"]["share"] == pytest.approx((4 + 4) / total)
    assert out["overall"]["partial_shared"]["share"] == pytest.approx(2.5 / total)
    assert out["overall"]["specific"]["share"] == pytest.approx(1.5 / total)
    assert out["overall"]["non_activated"]["share"] == pytest.approx(3 / total)
    assert out["overall"]["all_shared"]["count"] == 3 and out["overall"]["non_activated"]["count"] == 1
    assert out["overall"]["all_shared"]["mean_abs"] == pytest.approx(8 / 3)
    assert out["overall"]["all_shared"]["mean"] == pytest.approx((2 + 2 - 4) / 3)
    assert out["per_layer"]["all_shared"]["share"] == [pytest.approx(4 / 8.5), pytest.approx(4 / 6.5)]
    assert out["per_layer"]["partial_shared"]["mean_abs"] == [None, pytest.approx(1.25)]
    assert out["layers"] == [1, 2] and out["total_abs"] == pytest.approx(total)


def test_shares_sum_to_one_and_match_brute_force_over_languages() -> None:
    torch.manual_seed(1)
    langs, items, L, width = 3, 5, 4, 6
    acts = torch.randn(langs, items, L * width)
    codes = item_categories(acts, [0, 2, 3], tau=0.1)
    layers = [0, 3]
    attr = torch.randn(langs, 3, len(layers), width)
    out = attribution_by_category(codes, attr, layers)
    assert sum(out["overall"][c]["share"] for c in CATEGORIES) == pytest.approx(1.0)
    for j in range(len(layers)):
        assert sum(out["per_layer"][c]["share"][j] for c in CATEGORIES) == pytest.approx(1.0)
    mass = {c: 0.0 for c in CATEGORIES}
    layer_mass = {c: [0.0] * len(layers) for c in CATEGORIES}
    count = {c: 0 for c in CATEGORIES}
    for i in range(3):
        for j, layer in enumerate(layers):
            for k in range(width):
                cat = CATEGORIES[int(codes[i, layer * width + k])]
                count[cat] += 1
                for lang in range(langs):
                    mass[cat] += abs(float(attr[lang, i, j, k]))
                    layer_mass[cat][j] += abs(float(attr[lang, i, j, k]))
    total = sum(mass.values())
    for c in CATEGORIES:
        assert out["overall"][c]["share"] == pytest.approx(mass[c] / total)
        assert out["overall"][c]["count"] == count[c]
        if count[c]:
            assert out["overall"][c]["mean_abs"] == pytest.approx(mass[c] / (langs * count[c]))
        for j in range(len(layers)):
            assert out["per_layer"][c]["share"][j] == pytest.approx(layer_mass[c][j] / sum(layer_mass[d][j] for d in CATEGORIES))


def test_shapes_are_checked_and_the_plot_is_written(tmp_path) -> None:  # noqa: ANN001
    codes = torch.zeros(2, 12, dtype=torch.int8)
    with pytest.raises(ValueError):
        attribution_by_category(codes, torch.ones(3, 2, 4), [0, 1])  # 3 items vs 2
    with pytest.raises(ValueError):
        attribution_by_category(codes, torch.ones(2, 2, 4), [0])  # 2 layers of attributions, 1 named
    out = attribution_by_category(codes, torch.ones(2, 2, 4), [0, 2])
    assert out["overall"]["all_shared"]["share"] == 1.0 and out["overall"]["specific"]["mean_abs"] is None
    assert plot_attribution(out, tmp_path / "a.png").stat().st_size > 0
