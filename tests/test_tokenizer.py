"""VoiceBpeTokenizer and the text cleaners: ids equal the original's (fixture from tortoise-tts 3.0.0)."""
import os

import numpy as np
import pytest
import torch

from tortoise.utils.tokenizer import (DEFAULT_VOCAB_FILE, TokenizerError, VoiceBpeTokenizer, english_cleaners,
                                      expand_abbreviations, lev_distance, normalize_numbers)

FIXTURE = os.path.join(os.path.dirname(__file__), "parity", "fixtures", "frontend", "text.pt")


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def tok():
    return VoiceBpeTokenizer()


def test_ids_equal_the_originals(fx, tok):
    assert len(fx["texts"]) >= 17
    for text, want in zip(fx["texts"], fx["ids"]):
        assert tok.encode(text) == want, text[:60]


def test_cleaned_text_equals_the_originals(fx):
    for text, want in zip(fx["texts"], fx["cleaned"]):
        assert english_cleaners(text) == want, text[:60]


def test_decode_equals_the_originals(fx, tok):
    for ids, want in zip(fx["ids"], fx["decoded"]):
        assert tok.decode(ids) == want
        assert tok.decode(torch.tensor(ids)) == want
        assert tok.decode(np.array(ids)) == want


def test_basic_cleaners_ids_equal_the_originals(fx):
    basic = VoiceBpeTokenizer(use_basic_cleaners=True)
    for text, want in zip(fx["basic_texts"], fx["basic_ids"]):
        assert basic.encode(text) == want


def test_long_input_is_tokenized_whole(fx, tok):
    long_text = fx["texts"][-1]
    assert len(long_text) > 3000
    ids = tok.encode(long_text)
    assert len(ids) > 1000 and 1 not in ids  # no [UNK]
    assert tok.decode(ids) == english_cleaners(long_text)


@pytest.mark.parametrize("text, want", [
    ("$3.50", "three dollars, fifty cents"),
    ("$1", "one dollar"),
    ("$0.01", "one cent"),
    ("$0", "zero dollars"),
    ("21st", "twenty-first"),
    ("1984", "nineteen eighty-four"),
    ("2007", "two thousand seven"),
    ("1900", "nineteen hundred"),
    ("3.5", "three point five"),
    ("1,234", "twelve thirty-four"),  # 1001..2999 are read as years
    ("12,345", "twelve thousand, three hundred forty-five"),
])
def test_numbers_known_answers(text, want):
    assert normalize_numbers(text) == want


def test_abbreviations_need_a_period_and_ignore_case():
    assert expand_abbreviations("Dr. dr. mr mrs. st.") == "doctor doctor mr misess saint"


def test_space_token_and_special_ids(tok):
    ids = tok.encode("a b")
    assert ids[1] == 2 and len(ids) == 3  # [SPACE] is id 2
    assert tok.decode([0, *ids, 1]) == "a b"  # [STOP] and [UNK] are dropped on decode


@pytest.mark.parametrize("text", ["", "   ", "\n\t", '""'])
def test_empty_text_is_a_clear_error(tok, text):
    with pytest.raises(TokenizerError, match="nothing to speak"):
        tok.encode(text)


def test_a_number_too_long_to_spell_is_a_clear_error(tok):
    assert tok.encode("1" + "0" * 30)  # "one nonillion" is fine
    with pytest.raises(TokenizerError, match="cannot spell out the number 1000"):
        tok.encode("Call 1" + "0" * 40 + " now")
    with pytest.raises(TokenizerError, match="5000-digit"):
        tok.encode("$" + "9" * 5000)


def test_non_string_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="must be a string"):
        tok.encode(None)


def test_missing_vocab_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        VoiceBpeTokenizer(vocab_file=tmp_path / "nope.json")


def test_shipped_vocabulary_is_the_released_one():
    import hashlib

    with open(DEFAULT_VOCAB_FILE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "d1fa6e9b4741bb75b284331b833347c166ba8b0518e187f7370f123149ed87bb"
    assert VoiceBpeTokenizer().tokenizer.get_vocab_size() == 255


@pytest.mark.parametrize("a, b, d", [("kitten", "sitting", 3), ("", "abc", 3), ("same", "same", 0), ("ab", "ba", 2)])
def test_lev_distance(a, b, d):
    assert lev_distance(a, b) == d == lev_distance(b, a)
