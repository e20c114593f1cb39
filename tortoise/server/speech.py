"""``POST /v1/audio/speech``: the request, checked once, as a :class:`SpeechRequest` ready to render.

OpenAI's fields: ``model``, ``input``, ``voice``, ``response_format``, ``speed``, ``stream_format`` (and
``instructions``, which Tortoise cannot follow). Tortoise's own fields sit beside them (the ``extra_body`` of the
``openai`` client): ``seed``, ``candidates``, ``candidate``, ``text_split`` and every generation option of
:class:`~tortoise.options.GenerationOptions`, which overrides the model's preset. Unknown fields are refused, so a
misspelt option is never silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic import create_model

from tortoise.flags import TUNING
from tortoise.options import PRESETS, GenerationOptions, preset_options
from tortoise import render
from tortoise.render import SEED_SPACE, RenderSettings
from tortoise.server import audio
from tortoise.server.errors import bad_request

MAX_INPUT_CHARS = 4096  # OpenAI's limit
MIX_SEPARATORS = r"[&+]"  # a voice mix: a&b (the command line's spelling) or a+b (Kokoro-FastAPI's)
MODEL_PRESETS = {"tts-1": "fast", "tts-1-hd": "standard"}
STREAM_MODEL = "stream"
STREAM_PRESET = "fast"  # the streaming fast path samples with this preset's settings, as `tortoise-tts --stream` does
DEFAULT_TEXT_SPLIT = (200, 300)
OPTION_HELP = {  # the command line's help for the same knobs, plus those it spells as other flags
    **{name: text for name, _, text in TUNING},
    "sampler": "diffusion sampler: p, ddim or dpm++2m",
    "latent_averaging_mode": "diffusion conditioning: 0 first 4.27 s of each clip, 1 all chunks, 2 per-clip average",
    "exact_ranking": "score candidates padded to max_mel_tokens, as the original does (slower)",
}
_Number = Union[StrictFloat, StrictInt]
_TYPES = {int: StrictInt, float: _Number, bool: StrictBool, str: StrictStr, "int": StrictInt, "float": _Number,
          "bool": StrictBool, "str": StrictStr}


def models():
    """The model ids ``/v1/models`` lists and ``model`` accepts, each with the preset it renders with."""
    listed = [(name, preset, f"OpenAI's {name}: Tortoise's {preset} preset") for name, preset in MODEL_PRESETS.items()]
    listed.append((STREAM_MODEL, STREAM_PRESET, "the streaming fast path: one sample, HiFi-GAN decoder from the "
                                                "autoregressive latents (no CLVP, no diffusion); lowest latency"))
    listed += [(name, name, f"Tortoise's {name} preset") for name in PRESETS]
    return listed


class VoiceId(BaseModel):
    """OpenAI's custom-voice form of ``voice``: ``{"id": "alice"}``."""
    model_config = ConfigDict(extra="forbid")
    id: StrictStr


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr = Field(description="tts-1 (fast preset), tts-1-hd (standard preset), stream (the streaming "
                                         "fast path) or any preset name")
    input: StrictStr = Field(description=f"the text to speak, at most {MAX_INPUT_CHARS} characters")
    voice: Union[StrictStr, VoiceId] = Field(description="a voice of the voices directories, random, or a mix a&b "
                                                                 "(or a+b)")
    instructions: Optional[StrictStr] = Field(None, description="not supported by Tortoise; must be empty")
    response_format: Optional[StrictStr] = Field(None, description="mp3, opus, aac, flac, wav or pcm (those this "
                                                                  "installation writes; default mp3, else wav)")
    speed: Optional[_Number] = Field(None, description="0.25 to 4.0; a time stretch that keeps the pitch")
    stream_format: Optional[Literal["audio", "sse"]] = Field(
        None, description="audio: audio sent as it is made; sse: server-sent events with base64 audio; "
                          "omitted: one complete file")
    seed: Optional[StrictInt] = Field(None, description="random seed (0..2**32-1); clip i uses seed + i")
    candidates: Optional[StrictInt] = Field(None, description="candidates rendered per clip, ranked by CLVP")
    candidate: Optional[StrictInt] = Field(None, description="which candidate is returned (0: the best)")
    text_split: Optional[Union[StrictStr, list[StrictInt]]] = Field(
        None, description="clip lengths in characters as 'DESIRED,MAX' or [DESIRED, MAX] (default 200,300)")


def _option_fields():
    fields = {}
    for f in dataclasses.fields(GenerationOptions):
        fields[f.name] = (Optional[_TYPES[f.type]], Field(None, description=OPTION_HELP.get(f.name, f.name)))
    return fields


SpeechBody = create_model("SpeechBody", __base__=_Base, **_option_fields())


@dataclass(frozen=True)
class SpeechRequest:
    """A checked request: the text as clips, the voice group, how to render and how to send the audio."""
    texts: tuple
    voice: str            # as asked, e.g. "alice&bob"
    names: tuple          # the voice group, e.g. ("alice", "bob")
    settings: RenderSettings
    candidate: int
    response_format: str
    speed: float
    stream_format: Optional[str]
    model: str
    preset: str


def parse_json(raw: bytes):
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise bad_request(f"the body is not valid JSON ({reason}): send a JSON object such as "
                          '{"model": "tts-1", "input": "Hello.", "voice": "random"}', code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    return data


def validation_message(error: ValidationError):
    """The first problem pydantic found, as (one line, the field's name)."""
    first = error.errors()[0]
    loc = [str(x) for x in first.get("loc", ()) if not isinstance(x, int)]
    field = loc[0] if loc else None
    if first["type"] == "extra_forbidden":
        return (f"unknown field {field!r}: OpenAI's fields are model, input, voice, response_format, speed, "
                f"stream_format; Tortoise's are seed, candidates, candidate, text_split and the generation options "
                f"({', '.join(f.name for f in dataclasses.fields(GenerationOptions))})"), field
    if first["type"] == "missing":
        return f"{field} is required", field
    where = ".".join(loc) or "body"
    return f"{where}: {first['msg']}", field


def parse_body(data: dict):
    try:
        return SpeechBody.model_validate(data)
    except ValidationError as e:
        message, field = validation_message(e)
        raise bad_request(message, param=field) from None


def preset_for(model: str) -> str:
    if model in MODEL_PRESETS:
        return MODEL_PRESETS[model]
    if model == STREAM_MODEL:
        return STREAM_PRESET
    if model in PRESETS:
        return model
    names = ", ".join([*MODEL_PRESETS, STREAM_MODEL, *PRESETS])
    raise bad_request(f"unknown model {model!r}: use one of {names}", param="model", code="model_not_found")


def check_input(text: str) -> str:
    if len(text) > MAX_INPUT_CHARS:
        raise bad_request(f"input is {len(text)} characters; the limit is {MAX_INPUT_CHARS}: split the text over "
                          "several requests", param="input", code="string_above_max_length")
    if not text.strip():
        raise bad_request("input is empty: give the text to speak", param="input")
    return text.strip()


def voice_names(voice) -> tuple:
    """The voice group of ``voice``: a mix is spelt ``a&b`` (Tortoise's command line) or ``a+b`` (Kokoro-FastAPI's
    clients), ``-> ("a", "b")``; one group per request."""
    name = voice.id if isinstance(voice, VoiceId) else voice
    if not name.strip():
        raise bad_request("voice is empty: give a voice name, random, or a mix a&b (or a+b)", param="voice")
    if "," in name or name.strip() == "all":
        raise bad_request(f"voice {name!r}: one voice per request (mix voices with a&b or a+b); send one request per "
                          "voice", param="voice")
    names = tuple(n.strip() for n in re.split(MIX_SEPARATORS, name))
    if not all(names):
        raise bad_request(f"voice {name!r} has an empty part: a mix names each voice, as alice&bob or alice+bob",
                          param="voice")
    if "random" in names and len(names) > 1:
        raise bad_request("the random voice cannot be mixed with other voices: use voice random alone",
                          param="voice")
    return names


def check_format(fmt):
    supported = audio.supported_formats()
    if fmt is None:
        return audio.default_format()
    if fmt not in supported:
        if fmt not in audio.OPENAI_FORMATS:
            what = "not one of OpenAI's formats"
        elif not audio.has_av():
            what = "not available here (it needs PyAV: pip install av, part of the server extra)"
        else:
            what = "not supported by this installation's FFmpeg"
        raise bad_request(f"response_format {fmt!r} is {what}: use one of {', '.join(supported)}",
                          param="response_format", code="unsupported_format")
    return fmt


def check_speed(speed):
    speed = 1.0 if speed is None else float(speed)
    if not audio.MIN_SPEED <= speed <= audio.MAX_SPEED:
        raise bad_request(f"speed {speed:g} is out of range: use {audio.MIN_SPEED:g} to {audio.MAX_SPEED:g}",
                          param="speed")
    return speed


def check_instructions(instructions):
    if instructions and instructions.strip():
        raise bad_request("instructions are not supported by Tortoise (the voice's clips set the delivery); put "
                          "cues such as '[I am really sad,]' in brackets before the text instead (they condition the "
                          "voice and are cut from the audio)", param="instructions")


def generation_options(body, preset):
    overrides = {f.name: getattr(body, f.name) for f in dataclasses.fields(GenerationOptions)
                 if getattr(body, f.name) is not None}
    try:
        return preset_options(preset, **overrides)
    except (ValueError, TypeError) as e:
        named = [name for name in overrides if name in str(e)]  # the option the message is about
        raise bad_request(str(e), param=min(named, key=str(e).index) if named else None) from None


def split_text(text, text_split):
    from tortoise.utils.text import split_and_recombine_text
    desired, maximum = DEFAULT_TEXT_SPLIT
    if text_split is not None:
        try:
            parts = text_split.split(",") if isinstance(text_split, str) else text_split
            desired, maximum = (int(x) for x in parts)
        except (TypeError, ValueError):
            raise bad_request(f"text_split {text_split!r} must be 'DESIRED,MAX' or [DESIRED, MAX], e.g. '200,300'",
                              param="text_split") from None
        if not 0 < desired <= maximum:
            raise bad_request(f"text_split: need 0 < DESIRED <= MAX, got {desired},{maximum}", param="text_split")
    texts = tuple(t for t in split_and_recombine_text(text, desired, maximum) if t.strip())
    if not texts:
        raise bad_request("input has nothing to speak after cleaning: give some words", param="input")
    return texts


def check_candidates(body, opts, stream):
    candidate = body.candidate if body.candidate is not None else 0
    candidates = body.candidates if body.candidates is not None else candidate + 1
    if candidates < 1:
        raise bad_request("candidates must be at least 1", param="candidates")
    if stream and candidates > 1:
        raise bad_request(f"model {STREAM_MODEL} renders one candidate: drop candidates/candidate or use another "
                          "model", param="candidates")
    if candidates > opts.num_autoregressive_samples:
        raise bad_request(f"candidates {candidates} exceeds the {opts.num_autoregressive_samples} autoregressive "
                          "samples: raise num_autoregressive_samples", param="candidates")
    if not 0 <= candidate < candidates:
        raise bad_request(f"candidate {candidate} does not exist: with candidates {candidates} use 0.."
                          f"{candidates - 1} (0 is the best)", param="candidate")
    return candidates, candidate


def check_seed(seed):
    if seed is None:
        return random.randrange(SEED_SPACE)
    if not 0 <= seed < SEED_SPACE:
        raise bad_request(f"seed {seed} is out of range: use 0..{SEED_SPACE - 1}", param="seed")
    return seed


def speech_request(raw: bytes, model_identity=None) -> SpeechRequest:
    """Check a ``/v1/audio/speech`` body (bytes of JSON) field by field; any problem is a 400 naming the field."""
    body = parse_body(parse_json(raw))
    preset = preset_for(body.model)
    text = check_input(body.input)
    names = voice_names(body.voice)
    fmt = check_format(body.response_format)
    speed = check_speed(body.speed)
    check_instructions(body.instructions)
    opts = generation_options(body, preset)
    stream = body.model == STREAM_MODEL
    candidates, candidate = check_candidates(body, opts, stream)
    texts = split_text(text, body.text_split)
    settings = RenderSettings(opts, check_seed(body.seed), candidates, stream, model_identity or {})
    voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    return SpeechRequest(texts, voice.strip(), names, settings, candidate, fmt, speed, body.stream_format,
                         body.model, preset)


def render_job(voice, req: SpeechRequest):
    """The engine's job for a request: ``job(tts, progress)`` yields its clips' audio as ``(clip index, chunk)``
    pairs, as they are made (the same for every front end of the server)."""
    def job(tts, progress):
        return render.text_chunks(tts, voice, req.texts, req.settings, progress, req.candidate)
    return job


def request_schema():
    """The JSON schema of the body, for the OpenAPI page (``/docs``), its definitions inlined (self-contained)."""
    schema = SpeechBody.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref[len("#/$defs/"):]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node
    return inline(schema)
