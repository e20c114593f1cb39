"""split_and_recombine_text: chunks equal the original's (fixture) and no word is ever lost."""
import os
import random
import re

import pytest
import torch

from tortoise.utils.text import split_and_recombine_text

FIXTURE = os.path.join(os.path.dirname(__file__), "parity", "fixtures", "frontend", "text.pt")


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def _content(text: str) -> str:
    """Non-whitespace characters, curly quotes as straight ones (what the splitter normalises)."""
    return "".join(re.sub(r"[“”]", '"', text).split())


def test_chunks_equal_the_originals(fx):
    assert len(fx["split_texts"]) >= 6
    for text, desired, longest, want in zip(fx["split_texts"], fx["split_desired"], fx["split_max"],
                                            fx["split_chunks"]):
        assert split_and_recombine_text(text, desired, longest) == want, text[:60]


def test_original_examples():
    text = """
    This is a sample sentence.
    This is another sample sentence.
    This is a longer sample sentence that should force a split inthemiddlebutinotinthislongword.
    "Don't split my quote... please"
    """
    assert split_and_recombine_text(text, desired_length=20, max_length=40) == [
        "This is a sample sentence.", "This is another sample sentence.", "This is a longer sample sentence that",
        "should force a split", "inthemiddlebutinotinthislongword.", "\"Don't split my quote... please\""]


def test_quotations_stay_whole():
    quote = '"One. Two! Three? Four. Five, six seven."'
    chunks = split_and_recombine_text(f"Before it. {quote} After it.", desired_length=10, max_length=60)
    assert quote in chunks[1]


def test_chunks_respect_max_length(fx):
    for text in fx["split_texts"][:4]:
        assert all(len(c) <= 300 for c in split_and_recombine_text(text))


def test_a_word_longer_than_max_length_is_kept():
    word = "".join(chr(ord("a") + i % 26) for i in range(450))
    text = f"Short start. {word} and then the rest. " * 3
    chunks = split_and_recombine_text(text, desired_length=200, max_length=300)
    assert _content(" ".join(chunks)) == _content(text)  # every character, in order
    assert word in "".join(chunks)  # the word is cut (at desired_length) but nothing of it is lost


@pytest.mark.parametrize("seed", range(6))
def test_no_word_is_lost_on_long_random_text(seed):
    rng = random.Random(seed)
    vocab = ["the", "cat", "said", "hello.", "why?", "wow!!", '"quoted', 'end."', "well,", "\n", "“curly”",
             "x" * 320, "...", "it's", "no.\n\n", "a", "sentence", "with", "words"]
    text = " ".join(rng.choice(vocab) for _ in range(rng.randint(300, 900)))
    desired, longest = rng.choice([(200, 300), (50, 100), (20, 40)])
    chunks = split_and_recombine_text(text, desired, longest)
    # Only chunks made purely of punctuation may be dropped; every word character survives, in order.
    def letters(s):
        return re.sub(r"[^a-z'\"]", "", _content(s))
    assert letters(" ".join(chunks)) == letters(text)
    assert all(c == c.strip() and c for c in chunks)


def test_bad_lengths_are_an_error():
    with pytest.raises(ValueError, match="desired_length"):
        split_and_recombine_text("text", desired_length=300, max_length=200)


def test_short_and_empty_text():
    assert split_and_recombine_text("Just one sentence.") == ["Just one sentence."]
    assert split_and_recombine_text("") == []
    assert split_and_recombine_text(" ... ") == []
