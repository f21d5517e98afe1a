"""LinguaFranca metrics against direct implementations of their definitions."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from neuronspec.methods.linguafranca import (
    UnreachableThresholdWarning,
    contributions,
    key_regions,
    layer_scores,
    linguafranca,
    lrds_sads,
    max_zscore,
    normalize,
    parallel_layout,
    plot_layer_scores,
    plot_similarity,
    similarity_map,
    zscores,
)


def _labels(langs: int, items: int):
    return torch.arange(langs).repeat_interleave(items), torch.arange(items).repeat(langs)


def test_lrds_sads_on_constructed_map() -> None:
    lang, item = _labels(3, 4)
    n = len(lang)
    a, b, c = 0.7, 0.2, 0.5  # same language / different everything / same meaning
    sim = torch.full((n, n), b)
    sim[lang[:, None] == lang[None, :]] = a
    sim[(item[:, None] == item[None, :]) & (lang[:, None] != lang[None, :])] = c
    sim.fill_diagonal_(1.0)
    s = lrds_sads(sim, lang, item)
    assert s["lrds"] == pytest.approx(a - b) and s["sads"] == pytest.approx(c - b)
    assert s["pairs_same_language_different_meaning"] == 3 * 4 * 3
    assert s["pairs_same_meaning_different_language"] == 4 * 3 * 2


def test_lrds_sads_equal_pairwise_loops() -> None:
    torch.manual_seed(0)
    lang, item = _labels(3, 5)
    sim = similarity_map(torch.randn(len(lang), 12))
    groups: dict[str, list[float]] = {"sl": [], "dl": [], "si": []}
    for i, k in itertools.combinations(range(len(lang)), 2):
        v = float(sim[i, k])
        if lang[i] == lang[k] and item[i] != item[k]:
            groups["sl"].append(v)
        if lang[i] != lang[k] and item[i] != item[k]:
            groups["dl"].append(v)
        if item[i] == item[k] and lang[i] != lang[k]:
            groups["si"].append(v)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    s = lrds_sads(sim, lang, item)
    assert s["lrds"] == pytest.approx(mean(groups["sl"]) - mean(groups["dl"]), abs=1e-6)
    assert s["sads"] == pytest.approx(mean(groups["si"]) - mean(groups["dl"]), abs=1e-6)


def test_layer_scores_renormalise_each_slice() -> None:
    torch.manual_seed(1)
    lang, item = _labels(2, 4)
    x = torch.randn(len(lang), 3 * 5)
    per = layer_scores(x, lang, item, num_layers=3)
    for i in range(3):
        direct = lrds_sads(similarity_map(x[:, i * 5:(i + 1) * 5]), lang, item)
        assert per["lrds"][i] == pytest.approx(direct["lrds"], abs=1e-6)
        assert per["sads"][i] == pytest.approx(direct["sads"], abs=1e-6)
    assert torch.allclose(normalize(x, 3).view(8, 3, 5).norm(dim=-1), torch.ones(8, 3))


def test_contributions_linear_time_equals_pairwise_definition() -> None:
    torch.manual_seed(2)
    lang, _ = _labels(3, 6)
    xn = normalize(torch.randn(len(lang), 10))
    got = contributions(xn, lang)
    for l in range(3):
        rows = xn[lang == l].double()
        pairs = [rows[i] * rows[k] for i in range(len(rows)) for k in range(len(rows)) if i != k]
        assert torch.allclose(got[l].double(), torch.stack(pairs).mean(0), atol=1e-6)
        # summed over neurons: the mean within-language cosine similarity
        sim = rows @ rows.T
        off = ~torch.eye(len(rows), dtype=torch.bool)
        assert float(got[l].sum()) == pytest.approx(float(sim[off].mean()), abs=1e-5)


def test_max_zscore_is_attained_and_unreachable_threshold_warns() -> None:
    for n in (2, 5, 9):
        one_hot = torch.zeros(n, 1)
        one_hot[0] = 1.0
        assert float(zscores(one_hot)[0, 0]) == pytest.approx(max_zscore(n), rel=1e-6)
    langs = ["en", "zh", "fr", "es", "ru"]
    contrib = torch.rand(5, 2 * 4)
    with pytest.warns(UnreachableThresholdWarning, match="unreachable with 5 languages"):
        regions = key_regions(contrib, langs, num_layers=2, threshold=2.0)
    assert regions.warning and regions.sklr == 0 and set(regions.sets) == set(langs)
    with pytest.raises(ValueError, match="sqrt"):
        key_regions(contrib, langs, num_layers=2, threshold=2.0, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        key_regions(contrib, langs, num_layers=2, threshold=1.5)  # reachable: no warning


def test_key_regions_select_by_zscore_with_layer_major_columns() -> None:
    langs = ["en", "zh", "fr", "es", "ru", "de", "hi"]  # max z = sqrt(6) ≈ 2.45
    contrib = torch.zeros(7, 3 * 4) + 0.1 * torch.arange(7)[:, None] / 7  # spread, z ≤ ~1.5
    contrib[1, 1 * 4 + 2] = 5.0  # zh spike: layer 1, neuron 2
    contrib[6, 2 * 4 + 0] = 5.0  # hi spike: layer 2, neuron 0
    regions = key_regions(contrib, langs, num_layers=3, threshold=2.0)
    z = zscores(contrib)
    assert regions.counts == {l: int((z[i] > 2.0).sum()) for i, l in enumerate(langs)}
    assert regions.sets["zh"].to_dict() == {"ffn": {1: [2]}}
    assert regions.sets["hi"].to_dict() == {"ffn": {2: [0]}}
    assert regions.sklr == 2 and regions.warning is None


def test_end_to_end_language_signal_and_plots(tmp_path) -> None:
    torch.manual_seed(3)
    L, W, items = 2, 6, 5
    base = torch.randn(items, L * W)
    by_lang = {}
    for i, lang in enumerate(["en", "zh", "fr"]):
        offset = torch.zeros(L * W)
        offset[i] = 4.0  # a language direction in layer 0
        by_lang[lang] = base + offset + 0.1 * torch.randn(items, L * W)
    with pytest.warns(UnreachableThresholdWarning):
        res = linguafranca(by_lang, L, threshold=2.0)  # 3 languages: max z = sqrt(2)
    assert res.scores["lrds"] > 0 and res.scores["sads"] > 0
    assert res.per_layer["lrds"][0] > res.per_layer["lrds"][1]  # the language signal lives in layer 0
    res2 = linguafranca(by_lang, L, threshold=1.2)
    for i, lang in enumerate(["en", "zh", "fr"]):  # each language's direction is in its own region
        assert i in res2.regions.sets[lang].indices("ffn", 0).tolist()
        assert all(i not in res2.regions.sets[other].indices("ffn", 0).tolist() for other in res2.languages if other != lang)
    x, lang, item, languages = parallel_layout(by_lang)
    assert x.shape == (15, L * W) and languages == ["en", "zh", "fr"] and item[5] == 0 and lang[5] == 1
    assert plot_similarity(res.similarity, res.lang_ids, res.item_ids, res.languages, tmp_path / "sim.png").stat().st_size > 0
    assert plot_layer_scores(res.per_layer, tmp_path / "layers.png").stat().st_size > 0
    assert not math.isnan(res.scores["sads"])
