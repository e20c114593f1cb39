"""Redaction: text in [brackets] conditions the voice but is cut from the audio, found by wav2vec2 CTC alignment.

The aligner is the original's: ``Wav2Vec2ForCTC`` from ``jbetker/wav2vec2-large-robust-ft-libritts-voxpopuli`` with the
character vocabulary of ``jbetker/tacotron-symbols``. It is built only when a text has brackets (``TextToSpeech``
creates it on first use), so text without brackets never needs these weights. A models directory holding
subdirectories named like the hub repositories (``wav2vec2-large-robust-ft-libritts-voxpopuli``,
``tacotron-symbols``; ``save_pretrained`` layout) is used instead of the hub, which lets it run offline.

Alignment, as the original: the clip is resampled to 16 kHz and normalised, the CTC argmax transcript is aligned
character by character to the expected text (:func:`max_alignment`), each expected character is placed at the first
later frame whose argmax is that character, and characters the model did not hear are interpolated between their
neighbours. Where the original stops with an assertion, this version interpolates as well.
"""
import os
import re
from pathlib import Path

import torch

from tortoise.utils.checkpoints import CheckpointError

W2V_MODEL = "jbetker/wav2vec2-large-robust-ft-libritts-voxpopuli"
W2V_TOKENIZER = "jbetker/tacotron-symbols"
W2V_SAMPLE_RATE = 16000
SKIP = "~"
# Files from_pretrained needs: the model's config and weights (safetensors first, as transformers looks), the
# tokenizer's character vocabulary.
MODEL_FILES = ("config.json",)
MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json",)
_SPOKEN = re.compile(r"\w")  # a kept part without a letter or digit ("", " ", ".") speaks nothing


class AlignerUnavailable(CheckpointError):
    """The wav2vec2 aligner that redaction needs cannot be found or fetched; the message says the fix."""


def max_alignment(s1, s2, skip_character=SKIP, record=None):
    """``s1`` with every character that cannot be matched, in order, to a character of ``s2`` replaced by
    ``skip_character``, keeping as many as possible (a longest common subsequence with the original's greedy
    tie-breaks: a matching first character is always taken; on a tie, the character of ``s1`` is skipped).
    Bottom-up, so long texts do not hit Python's recursion limit. ``record`` is accepted for compatibility."""
    if skip_character in s1:
        raise ValueError(f"the skip character {skip_character!r} may not appear in the text {s1!r}")
    n, m = len(s1), len(s2)
    # kept[i][j]: characters of s1[i:] kept when aligned against s2[j:]
    kept = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = kept[i], kept[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if s1[i] == s2[j] else max(row[j + 1], below[j])
    out, i, j = [], 0, 0
    while i < n:
        if j == m:
            out.append(skip_character * (n - i))
            break
        if s1[i] == s2[j]:
            out.append(s1[i])
            i, j = i + 1, j + 1
        elif kept[i][j + 1] > kept[i + 1][j]:
            j += 1
        else:
            out.append(skip_character)
            i += 1
    return "".join(out)


def interpolate_missing(positions, end):
    """Replace each run of -1 in ``positions`` by values spaced evenly between its known neighbours (``end`` after
    the last), as the original does."""
    pos = list(positions) + [end]
    i = 0
    while i < len(pos) - 1:
        if pos[i] != -1:
            i += 1
            continue
        nxt = next(j for j in range(i + 1, len(pos)) if pos[j] != -1)
        prev = pos[i - 1] if i > 0 else 0
        gap = pos[nxt] - prev
        for j in range(i, nxt):
            pos[j] = (j - i + 1) * gap // (nxt - i + 1) + prev
        i = nxt
    return pos[:-1]


def split_redactions(text):
    """``"a [b] c"`` -> (``"a b c"``, [(start, stop), ...] character intervals of the bare text to keep)."""
    pieces = text.split("[")
    parts = [pieces[0]]
    for piece in pieces[1:]:
        if "]" not in piece:
            raise ValueError(f"unmatched '[' in {text!r}: every '[' needs a ']' (no nesting); or pass "
                             "--disable_redaction to speak the brackets' text")
        parts.extend(piece.split("]", 1))
    if any("]" in p for p in parts[::2]):
        raise ValueError(f"unmatched ']' in {text!r}: every ']' needs a '[' before it")
    keep, at = [], 0
    for i, part in enumerate(parts):
        if i % 2 == 0 and part:
            keep.append((at, max(0, at + len(part) - 1)))
        at += len(part)
    return "".join(parts), keep


def _source(repo, models_dir):
    """A local ``save_pretrained`` directory for ``repo`` inside ``models_dir`` when present, else the hub id."""
    if models_dir:
        local = Path(models_dir).expanduser() / repo.split("/")[-1]
        if local.is_dir():
            return str(local)
    return repo


def check_redaction(texts, models_dir=None, enabled=True):
    """Before any generation: refuse what redaction cannot do, at once and in one line.

    ``texts`` are the clips the text was split into. When redaction is ``enabled`` and some clip has [brackets]:
    unmatched brackets and text that is entirely in brackets (nothing would be spoken) raise ``ValueError``; an
    aligner that cannot be had (offline and not in ``models_dir`` nor the Hugging Face cache) raises
    :class:`AlignerUnavailable`. Online, the aligner's files are downloaded now rather than after the first clip.
    """
    if not enabled:
        return
    bracketed = [(i, t) for i, t in enumerate(texts) if "[" in t or "]" in t]
    if not bracketed:
        return
    spoken = {i: _spoken(t) for i, t in bracketed}  # raises for unmatched brackets
    if not any(spoken.values()) and len(bracketed) == len(texts):
        raise ValueError("the text is entirely in [brackets], so nothing would be spoken (bracketed words only shape "
                         "the voice): add the words to speak outside the brackets, or pass --disable_redaction to "
                         "speak the bracketed text")
    for i, t in bracketed:
        if not spoken[i]:
            short = t if len(t) <= 60 else t[:57] + "..."
            raise ValueError(f"clip {i} ({short!r}) is entirely in [brackets], so nothing of it would be spoken: "
                             "keep bracketed words in the sentence they shape (or raise --text_split), or pass "
                             "--disable_redaction to speak them")
    ensure_aligner_files(models_dir)


def _spoken(text):
    bare, keep = split_redactions(text)
    return any(_SPOKEN.search(bare[a:b + 1]) for a, b in keep)


def _hub_offline():
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes",
                                                                                               "on")


def ensure_aligner_files(models_dir=None):
    """Make sure the aligner can be loaded without building it: its ``save_pretrained`` directories in
    ``models_dir`` (default: the package's models directory), else its files in the Hugging Face cache, fetched now
    when online. Raises :class:`AlignerUnavailable` with the fix."""
    from tortoise.utils.checkpoints import default_models_dir
    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    for repo, files, weights in ((W2V_MODEL, MODEL_FILES, MODEL_WEIGHTS), (W2V_TOKENIZER, TOKENIZER_FILES, ())):
        local = models_dir / repo.split("/")[-1]
        if local.is_dir():
            missing = [f for f in files if not (local / f).is_file()]
            if weights and not any((local / w).is_file() or (local / f"{w}.index.json").is_file() for w in weights):
                missing.append(" or ".join(weights))
            if missing:
                raise AlignerUnavailable(f"{local} lacks {', '.join(missing)}: save the aligner there again with "
                                         f"save_pretrained (from {repo}), or pass --disable_redaction")
            continue
        _fetch(repo, files, weights, models_dir)


def _fetch(repo, files, weights, models_dir):
    from huggingface_hub import hf_hub_download
    offline = _hub_offline()

    def get(name):
        return hf_hub_download(repo_id=repo, filename=name, local_files_only=offline)

    try:
        for name in files:
            get(name)
        if weights:
            errors = []
            for name in weights:
                try:
                    get(name)
                    break
                except Exception as e:  # this name is absent: try the next one, as from_pretrained does
                    errors.append(e)
            else:
                raise errors[-1]
    except Exception as e:
        where = "offline (HF_HUB_OFFLINE is set)" if offline else f"from the hub ({type(e).__name__})"
        name = repo.split("/")[-1]
        raise AlignerUnavailable(
            f"redaction of [bracketed] text needs the wav2vec2 aligner {repo}, which is not in {models_dir} nor in "
            f"the Hugging Face cache and cannot be downloaded {where}: download it once with network access, or "
            f"save it with save_pretrained as {models_dir / name}, or pass --disable_redaction to speak the bracketed "
            "text") from None


class Wav2VecAlignment:
    """wav2vec2 audio <-> text alignment, and redaction built on it."""

    def __init__(self, device=None, models_dir=None, model_name=W2V_MODEL, tokenizer_name=W2V_TOKENIZER):
        from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC
        model_src, tok_src = _source(model_name, models_dir), _source(tokenizer_name, models_dir)
        try:
            self.model = Wav2Vec2ForCTC.from_pretrained(model_src).eval()
            self.tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(tok_src)
        except Exception as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise RuntimeError(f"redaction of [bracketed] text needs the wav2vec2 aligner ({model_name}, "
                               f"{tokenizer_name}), which could not be loaded ({reason}); let it download once, "
                               f"save it under the models directory, or pass --disable_redaction") from None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device)

    def _char_ids(self, text):
        delim = getattr(self.tokenizer, "word_delimiter_token", "|")
        return self.tokenizer.convert_tokens_to_ids([delim if c == " " else c for c in text])

    def align(self, audio, expected_text, audio_sample_rate=24000):
        """Sample position in ``audio`` ``[1, N]`` where each character of ``expected_text`` starts."""
        from tortoise.utils.sound import resample
        orig_len = audio.shape[-1]
        with torch.no_grad():
            wav = resample(audio.float().to(self.device), audio_sample_rate, W2V_SAMPLE_RATE)
            wav = (wav - wav.mean()) / torch.sqrt(wav.var() + 1e-7)
            logits = self.model(wav.reshape(1, -1)).logits[0]  # [frames, vocab]
        frame_ids = logits.argmax(-1).tolist()
        heard = self.tokenizer.decode(frame_ids, clean_up_tokenization_spaces=True)  # the original's default
        fixed = max_alignment(expected_text.lower(), heard)
        compression = orig_len // max(len(frame_ids), 1)
        positions = [-1] * len(fixed)
        if not positions:
            return positions
        positions[0] = 0  # the first character is a given
        ids = self._char_ids(fixed)
        targets = [(i, ids[i]) for i in range(1, len(fixed)) if fixed[i] != SKIP]
        k = 0
        for frame, top in enumerate(frame_ids):
            if k == len(targets):
                break
            if top == targets[k][1]:
                positions[targets[k][0]] = frame * compression
                k += 1
        return interpolate_missing(positions, orig_len)

    def redact(self, audio, expected_text, audio_sample_rate=24000):
        """``audio`` ``[1, N]`` with the speech of every [bracketed] part of ``expected_text`` cut out."""
        if "[" not in expected_text:
            return audio
        bare, keep = split_redactions(expected_text)
        if not keep:
            return audio[:, :0]
        alignments = self.align(audio, bare, audio_sample_rate)
        return torch.cat([audio[:, alignments[a]:alignments[b]] for a, b in keep], dim=-1)
