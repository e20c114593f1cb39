"""Text to BPE token ids, exactly as the released checkpoints expect them.

The pipeline is the original Tortoise one: ``english_cleaners`` (transliterate to ASCII, lower-case, spell out
numbers, money and ordinals, expand abbreviations, collapse whitespace, drop double quotes), then every space becomes
the ``[SPACE]`` token and the result goes through the shipped byte-pair vocabulary (``tortoise/data/tokenizer.json``).
Token ids: ``[STOP]`` = 0, ``[UNK]`` = 1, ``[SPACE]`` = 2; the vocabulary has 255 entries.
"""
import os
import re
from functools import lru_cache

from tokenizers import Tokenizer
from unidecode import unidecode

DEFAULT_VOCAB_FILE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "data", "tokenizer.json")

SPACE_TOKEN = "[SPACE]"
STOP_TOKEN = "[STOP]"
UNK_TOKEN = "[UNK]"


class TokenizerError(ValueError):
    """Text that cannot be turned into token ids."""


# ---------------------------------------------------------------------------------------------------------------
# Cleaners. Order and regular expressions follow the original exactly: the ids depend on them.
# ---------------------------------------------------------------------------------------------------------------

# (abbreviation, expansion); applied in this order, case-insensitively, only when followed by a period.
ABBREVIATIONS = (
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
    ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
    ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"),
    ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
)
_ABBREVIATION_RES = tuple((re.compile(r"\b%s\." % short, re.IGNORECASE), long) for short, long in ABBREVIATIONS)

_WHITESPACE_RE = re.compile(r"\s+")
_COMMA_NUMBER_RE = re.compile(r"([0-9][0-9\,]+[0-9])")
_DECIMAL_NUMBER_RE = re.compile(r"([0-9]+\.[0-9]+)")
# After transliteration '£' has become 'PS', so this pattern only fires for basic (non-transliterating) callers;
# kept because the original applies it and ids must match.
_POUNDS_RE = re.compile(r"£([0-9\,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER_RE = re.compile(r"[0-9]+")


@lru_cache(maxsize=1)
def _inflect_engine():
    import inflect  # builds large tables: created on first use, not at import

    return inflect.engine()


def _words(num, **kwargs) -> str:
    """inflect's number_to_words, with its out-of-range failure (over 36 digits) turned into a clear error."""
    try:
        return _inflect_engine().number_to_words(num, **kwargs)
    except Exception as e:  # inflect.NumOutOfRangeError
        raise TokenizerError(f"cannot spell out the number {str(num)[:40]}{'...' if len(str(num)) > 40 else ''} "
                             f"({type(e).__name__}); write it in words or shorten it") from None


def _to_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:  # Python refuses int() of more than 4300 digits
        raise TokenizerError(f"cannot spell out a {len(digits)}-digit number; write it in words or shorten it") from None


def _plural(count: int, singular: str) -> str:
    return f"{count} {singular}" if count == 1 else f"{count} {singular}s"


def _expand_dollars(m: re.Match) -> str:
    amount = m.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " dollars"  # e.g. "$1.2.3": not money, leave the digits to the number pass
    dollars = _to_int(parts[0]) if parts[0] else 0
    cents = _to_int(parts[1]) if len(parts) > 1 and parts[1] else 0
    if dollars and cents:
        return f"{_plural(dollars, 'dollar')}, {_plural(cents, 'cent')}"
    if dollars:
        return _plural(dollars, "dollar")
    if cents:
        return _plural(cents, "cent")
    return "zero dollars"


def _expand_ordinal(m: re.Match) -> str:
    return _words(m.group(0))


def _expand_number(m: re.Match) -> str:
    num = _to_int(m.group(0))
    if not 1000 < num < 3000:
        return _words(num, andword="")
    # Years are read in pairs ("nineteen eighty-four"), with the 2000s as "two thousand ...".
    if num == 2000:
        return "two thousand"
    if 2000 < num < 2010:
        return "two thousand " + _words(num % 100)
    if num % 100 == 0:
        return _words(num // 100) + " hundred"
    return _words(num, andword="", zero="oh", group=2).replace(", ", " ")


def normalize_numbers(text: str) -> str:
    """Spell out numbers, money, decimals and ordinals ("$3.50" -> "3 dollars, 50 cents" -> words)."""
    text = _COMMA_NUMBER_RE.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS_RE.sub(r"\1 pounds", text)
    text = _DOLLARS_RE.sub(_expand_dollars, text)
    text = _DECIMAL_NUMBER_RE.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL_RE.sub(_expand_ordinal, text)
    return _NUMBER_RE.sub(_expand_number, text)


expand_numbers = normalize_numbers


def expand_abbreviations(text: str) -> str:
    for regex, replacement in _ABBREVIATION_RES:
        text = regex.sub(replacement, text)
    return text


def lowercase(text: str) -> str:
    return text.lower()


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text)


def convert_to_ascii(text: str) -> str:
    return unidecode(text)


def basic_cleaners(text: str) -> str:
    """Lower-case and collapse whitespace; no transliteration."""
    return collapse_whitespace(lowercase(text))


def transliteration_cleaners(text: str) -> str:
    """For non-English text: transliterate to ASCII, lower-case, collapse whitespace."""
    return collapse_whitespace(lowercase(convert_to_ascii(text)))


def english_cleaners(text: str) -> str:
    """The cleaner the released checkpoints were trained with."""
    text = lowercase(convert_to_ascii(text))
    text = expand_abbreviations(expand_numbers(text))
    return collapse_whitespace(text).replace('"', "")


def lev_distance(s1: str, s2: str) -> int:
    """Levenshtein edit distance (used by the redaction aligner to match transcripts)."""
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    previous = list(range(len(s1) + 1))
    for i2, c2 in enumerate(s2):
        current = [i2 + 1]
        for i1, c1 in enumerate(s1):
            current.append(previous[i1] if c1 == c2 else 1 + min(previous[i1], previous[i1 + 1], current[-1]))
        previous = current
    return previous[-1]


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------------


class VoiceBpeTokenizer:
    """Cleaners + ``[SPACE]`` substitution + the shipped BPE vocabulary.

    ``encode(text) -> list[int]``; ``decode(ids) -> str`` (ids may be a list, numpy array or tensor).
    """

    def __init__(self, vocab_file=None, use_basic_cleaners=False):
        path = DEFAULT_VOCAB_FILE if vocab_file is None else os.fspath(vocab_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"tokenizer vocabulary not found: {path}; pass vocab_file= pointing at a tokenizer.json "
                "(the package ships one in tortoise/data/)")
        self.tokenizer = Tokenizer.from_file(path)
        self.preprocess_text = basic_cleaners if use_basic_cleaners else english_cleaners

    def encode(self, txt: str) -> list:
        if not isinstance(txt, str):
            raise TokenizerError(f"text to speak must be a string, got {type(txt).__name__}")
        cleaned = self.preprocess_text(txt)
        if not cleaned.strip():
            raise TokenizerError(f"nothing to speak: the text {txt!r} is empty after cleaning; give some words")
        return self.tokenizer.encode(cleaned.replace(" ", SPACE_TOKEN)).ids

    def decode(self, seq) -> str:
        if hasattr(seq, "tolist"):  # torch.Tensor or numpy array
            seq = seq.tolist()
        text = self.tokenizer.decode([int(i) for i in seq], skip_special_tokens=False)
        # The decoder joins tokens with spaces; real spaces are [SPACE] tokens.
        text = text.replace(" ", "").replace(SPACE_TOKEN, " ")
        return text.replace(STOP_TOKEN, "").replace(UNK_TOKEN, "")
