"""ROUGE-L against hand-computed LCS in Latin, Han, Devanagari and Arabic script."""

from __future__ import annotations

import pytest

from neuronspec.evaluate.rouge import RougeTokenizer, lcs_length, rouge_l, tokenize


def f1(lcs: int, cand: int, ref: int) -> float:
    p, r = lcs / cand, lcs / ref
    return 2 * p * r / (p + r)


def test_english_words() -> None:
    # the cat sat on the mat / the cat is on the mat: LCS "the cat on the mat" = 5 of 6 and 6
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(f1(5, 6, 6))


def test_chinese_characters() -> None:
    # 我爱北京天安门 (7 chars) vs 我爱天安门 (5): LCS 我爱天安门 = 5
    assert tokenize("我爱北京天安门！") == list("我爱北京天安门")
    assert rouge_l("我爱北京天安门！", "我爱天安门") == pytest.approx(f1(5, 7, 5))


def test_hindi_words_keep_their_vowel_signs() -> None:
    # मैं घर जा रहा हूँ vs मैं बाजार जा रहा हूँ: 5 words each, LCS 4 (all but the place)
    assert tokenize("मैं घर जा रहा हूँ।") == ["मैं", "घर", "जा", "रहा", "हूँ"]
    assert rouge_l("मैं घर जा रहा हूँ।", "मैं बाजार जा रहा हूँ") == pytest.approx(f1(4, 5, 5))


def test_arabic_words() -> None:
    # ذهب الولد إلى المدرسة vs ذهب الولد إلى السوق: LCS 3 of 4 and 4
    assert tokenize("ذهبَ الولدُ") == ["ذهبَ", "الولدُ"]  # harakat stay on their word
    assert rouge_l("ذهب الولد إلى المدرسة.", "ذهب الولد إلى السوق") == pytest.approx(f1(3, 4, 4))


def test_mixed_scripts_thai_and_edges() -> None:
    assert tokenize("GPT是模型") == ["gpt", "是", "模", "型"]
    assert tokenize("ดี") == ["ดี"]  # Thai vowel mark stays on its consonant
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("a b c", "x y z") == 0.0
    assert rouge_l("Same words here", "same, words: here!") == 1.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # textbook example


def test_agrees_with_rouge_score_given_our_tokenizer() -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeTokenizer())
    pairs = [("我爱北京天安门", "我爱天安门"), ("मैं घर जा रहा हूँ", "मैं बाजार जा रहा हूँ"), ("the cat sat", "a cat sat down")]
    for cand, ref in pairs:
        assert rouge_l(cand, ref) == pytest.approx(scorer.score(ref, cand)["rougeL"].fmeasure)
