"""Error messages in the page's words: the library's messages name command-line flags (their fix for a terminal
user); the page names its own controls instead.

Only flags of `tortoise-tts` are rewritten; anything else (`pip install torch --index-url ...`, Docker's
`--device /dev/dri`) is left as it is.
"""

from __future__ import annotations

import re

# Whole phrases first (their grammar changes), then single flags. Each pattern ends at a word boundary.
_PHRASES = (
    (r"(?:,\s*)?or pass --disable_redaction to speak (?:the bracketed text|them|the brackets' text)",
     " or remove the brackets to speak that text"),
    (r"(?:,\s*)?or pass --disable_redaction", " or remove the brackets from the Text"),
    (r"\(or raise --text_split\)", "(or raise 'Minimum characters before splitting' under Advanced)"),
    (r"choose another with --device / TORTOISE_DEVICE", "choose another Device in the sidebar"),
    (r"requested \(--device\)", "chosen in the sidebar"),
    (r"use --voice random alone", "choose 'random' alone in Voices (or untick 'Blend them into one voice')"),
    (r"pass a voice such as --voice random, or list them with --list_voices",
     "choose a voice in the Voices list"),
    (r"or pick one with --list_voices", "or pick one from the Voices list"),
    (r"(?:put it there or )?pass --models_dir(?: DIR)?", "put it there or choose another Models directory"),
    (r"pass --voices_dir to add a directory of voices", "set the Extra voices directory in the sidebar"),
    (r"under a --voices_dir", "under the Extra voices directory"),
    (r"add voice directories with --voices_dir", "set the Extra voices directory in the sidebar"),
    (r"use --vocoder univnet", "choose the univnet Vocoder in the sidebar"),
)
_FLAGS = {  # flag -> the page's control
    "models_dir": "the Models directory (sidebar)",
    "voices_dir": "the Extra voices directory (sidebar)",
    "voice": "the Voices list",
    "list_voices": "the Voices list",
    "vocoder": "the Vocoder (sidebar)",
    "device": "the Device (sidebar)",
    "low_vram": "'Low VRAM' (sidebar)",
    "half": "'Half precision' (sidebar)",
    "no_cache": "'KV cache' (sidebar)",
    "ar_checkpoint": "the Autoregressive checkpoint (sidebar)",
    "diff_checkpoint": "the Diffusion checkpoint (sidebar)",
    "candidates": "'Candidates' (Advanced)",
    "num_autoregressive_samples": "'Autoregressive samples' (Advanced)",
    "steps": "'Steps' (Advanced)",
    "diffusion_iterations": "'Steps' (Advanced)",
    "sampler": "'Sampler' (Advanced)",
    "seed": "'Seed' (Advanced)",
    "max_mel_tokens": "'Maximum clip length' (Advanced)",
    "text_split": "'Minimum characters before splitting' (Advanced)",
    "latent_averaging_mode": "'Latent averaging' (Advanced)",
    "cond_free": "'Conditioning-free guidance' (Advanced)",
    "disable_redaction": "removing the brackets from the Text",
}
_FLAG = re.compile(r"(?<![\w-])--(" + "|".join(sorted(map(re.escape, _FLAGS), key=len, reverse=True))
                   + r")(?![\w-])(?!\s+/dev/)")


def page_wording(message: str) -> str:
    """`message` with the command line's flags replaced by the page's controls."""
    for pattern, replacement in _PHRASES:
        message = re.sub(pattern, replacement, message)
    message = _FLAG.sub(lambda m: _FLAGS[m.group(1)], message)
    return re.sub(r"  +", " ", message)
