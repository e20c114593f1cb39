"""The Tortoise web UI (a Streamlit script): `turtle` serves it; `streamlit run scripts/app.py` from a checkout.

Everything the page does goes through `tortoise.api` (the `Session` object comes from a cached factory keyed by
the settings that shape it), `tortoise.utils.voices` and the device layer; nothing here re-implements a pipeline step.
Importing this module has no side effects: the page is drawn by `render()`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import streamlit as st

from tortoise.options import ModelOptions
from tortoise.progress import STAGE_LABELS
from tortoise.webui import device_info, original_voices
from tortoise.webui.generation import Job, load_history, readable_error, run_job, save_history, split_text
from tortoise.webui.settings import (BACKEND_CHOICES, COND_FREE_CHOICES, LATENT_MODES, PATH_FIELDS, RANGES,
                                     Settings, default_settings_path, load_settings, paths_locked, pinned_paths,
                                     save_settings)
from tortoise.utils.voice_upload import ALLOWED_EXTENSIONS, MAX_CLIP_BYTES, UploadError, create_voice

PRESET_DEFAULT = "preset default"
HISTORY_SHOWN = 10
K = "w_"  # widget keys are K + a Settings field name


# ---- the models: one Session per distinct set of model options, held by Streamlit's resource cache ----

@st.cache_resource(max_entries=1, show_spinner=False)
def load_tts(models_dir: str, device: str, low_vram: bool, kv_cache: bool, half: bool, ar_checkpoint: str,
             diff_checkpoint: str, vocoder: str, backend: str = "torch", threads: int = 0):
    from tortoise.session import Session
    options = ModelOptions(models_dir=str(Path(models_dir).expanduser()),
                           device=None if device == device_info.AUTO else device, high_vram=not low_vram,
                           kv_cache=kv_cache, half=half, backend=backend, threads=threads or None,
                           ar_checkpoint=str(Path(ar_checkpoint).expanduser()) if ar_checkpoint else None,
                           diff_checkpoint=str(Path(diff_checkpoint).expanduser()) if diff_checkpoint else None,
                           vocoder=vocoder or "univnet")
    return Session(options)


@st.cache_resource(show_spinner=False)
def generation_lock():
    """One generation at a time per server: sessions share the cached model, which is not thread-safe."""
    import threading
    return threading.Lock()


def api_choices() -> dict:
    """Presets, samplers and vocoders as the API defines them."""
    from tortoise import api
    return {"presets": list(api.PRESETS), "samplers": list(api.SAMPLERS), "vocoders": list(api.VOCODERS)}


@st.cache_data(ttl=600, show_spinner=False)
def cached_doctor_report(device: str) -> str:
    try:
        return device_info.doctor_report(device)
    except Exception as e:
        return f"The device report failed: {readable_error(e)}"


@st.cache_data(ttl=600, show_spinner=False)
def cached_device_choices() -> tuple[list[str], str | None]:
    try:
        return device_info.device_choices(), None
    except Exception as e:
        return [device_info.AUTO, "cpu"], f"Device list unavailable ({readable_error(e)}); offering cpu only."


# ---- session state ---------------------------------------------------------------------------------------------

def locked_paths() -> bool:
    """Whether the server-side paths are read-only here: the server listens beyond localhost (Streamlit's
    server.address; unset means every interface) or `turtle --lock-paths`."""
    return paths_locked(st.get_option("server.address"))


def init_session() -> None:
    """On a session's first run: settings from the file into the widgets (paths the server pins replace the file's),
    history from the output directory."""
    ss = st.session_state
    if "_settings_loaded" in ss:
        return
    settings, warning = load_settings()
    ss["_saved_settings"] = dataclasses.asdict(settings)
    ss["_file_paths"] = {name: getattr(settings, name) for name in PATH_FIELDS}
    settings = dataclasses.replace(settings, **pinned_paths(locked_paths()))
    for f in dataclasses.fields(Settings):
        ss[K + f.name] = getattr(settings, f.name)
    ss["_settings_warning"] = warning
    ss["history"] = load_history(settings.output_dir)
    ss["_settings_loaded"] = True


def enforce_server_paths() -> None:
    """Read-only paths: every run puts the server's values back, whatever a client sent for those widgets."""
    if locked_paths():
        for name, value in pinned_paths(True).items():
            st.session_state[K + name] = value


def fit_choice(key: str, options: list, fallback) -> None:
    """Keep a remembered choice only if it is still offered."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = fallback if fallback in options else options[0]


def current_settings() -> Settings:
    ss = st.session_state
    settings = Settings(**{f.name: ss[K + f.name] for f in dataclasses.fields(Settings) if K + f.name in ss})
    return dataclasses.replace(settings, **pinned_paths(True)) if locked_paths() else settings


def remember_settings(settings: Settings) -> None:
    """Write the settings file when anything changed (atomic write; a failure is a warning, not an error). Paths the
    server pins are not the page's to remember: the file keeps its own."""
    pinned = pinned_paths(locked_paths())
    settings = dataclasses.replace(settings, **{name: st.session_state.get("_file_paths", {}).get(name, value)
                                                for name, value in pinned.items()})
    data = dataclasses.asdict(settings)
    if data == st.session_state.get("_saved_settings"):
        return
    try:
        save_settings(settings)
        st.session_state["_saved_settings"] = data
    except OSError as e:
        st.warning(f"Could not save the settings to {default_settings_path()}: {e.strerror or e}.")


# ---- controls --------------------------------------------------------------------------------------------------

SERVER_SET = ("Set by the server when it starts (turtle --models-dir, --voices-dir, --output-dir, --ar-checkpoint, "
              "--diff-checkpoint); read-only here because the page is reachable from other machines (or turtle "
              "--lock-paths).")


def path_input(label: str, name: str, help: str, locked: bool, **kw) -> None:
    st.text_input(label, key=K + name, help=SERVER_SET if locked else help, disabled=locked, **kw)


def sidebar(choices: dict) -> None:
    locked = locked_paths()
    with st.sidebar:
        st.header("Model")
        if locked:
            st.caption("Paths on the server are set when it starts and shown read-only: this page may be reached "
                       "from other machines and has no login.")
        path_input("Models directory", "models_dir", "Where the checkpoints are (downloaded there when missing).",
                   locked)
        path_input("Autoregressive checkpoint", "ar_checkpoint", "Path of a fine-tuned GPT checkpoint (.pth); empty "
                   "for the released one.", locked, placeholder="released autoregressive.pth")
        path_input("Diffusion checkpoint", "diff_checkpoint", "Path of a fine-tuned diffusion checkpoint (.pth); "
                   "empty for the released one.", locked, placeholder="released diffusion_decoder.pth")
        for key, what in (("ar_checkpoint", "Autoregressive"), ("diff_checkpoint", "Diffusion")):
            path = st.session_state[K + key].strip()
            if path and not Path(path).expanduser().is_file():
                st.warning(f"{what} checkpoint {path} is not a file.")
        vocoders = [""] + choices["vocoders"]
        fit_choice(K + "vocoder", vocoders, "")
        st.selectbox("Vocoder", vocoders, key=K + "vocoder", format_func=lambda v: v or "API default")
        devices, device_warning = cached_device_choices()
        fit_choice(K + "device", devices, device_info.AUTO)
        st.selectbox("Device", devices, key=K + "device", help="auto: xpu, then cuda, then mps, then cpu.")
        if device_warning:
            st.caption(device_warning)
        st.checkbox("Low VRAM", key=K + "low_vram", help="Keep each model on the device only during its stage.")
        st.checkbox("Half precision", key=K + "half", help="fp16/bf16 where the device does it well.")
        st.checkbox("KV cache", key=K + "kv_cache", help="Much faster autoregressive decoding; uses more memory.")
        number("CPU threads", "threads", "0: one per core this process may use. Lower it when the machine runs "
               "other jobs too.")
        fit_choice(K + "backend", list(BACKEND_CHOICES), "torch")
        st.selectbox("Backend", list(BACKEND_CHOICES), key=K + "backend",
                     help="torch, or the networks as exported graphs on ONNX Runtime or OpenVINO (exported and "
                          "verified on first use; needs the onnx / openvino extra).")
        st.header("Directories")
        path_input("Extra voices directory", "extra_voices_dir", "Searched before the package's voices; uploaded "
                   "voices are saved here.", locked)
        path_input("Output directory", "output_dir", "Each run writes its clips into a new subdirectory here.",
                   locked)
        with st.expander("Device panel"):
            if st.button("Refresh report", key="refresh_doctor"):
                cached_doctor_report.clear()
                cached_device_choices.clear()
            st.code(cached_doctor_report(st.session_state[K + "device"]), language=None)


def known_voices(extra_dir: str) -> tuple[list[str], str | None]:
    from tortoise.utils.voices import get_voices
    dirs = [extra_dir] if extra_dir and Path(extra_dir).expanduser().is_dir() else []
    note = None
    if extra_dir and not dirs:
        note = f"The extra voices directory {extra_dir} does not exist yet; uploading a voice creates it."
    try:
        return sorted(get_voices([str(Path(d).expanduser()) for d in dirs])), note
    except Exception as e:
        return [], f"Could not list the voices: {readable_error(e)}"


def main_controls(choices: dict, voices: list[str]) -> None:
    st.text_area("Text", key=K + "text", height=140, help="Text to speak. Long text is split into clips; "
                 "text in [brackets] shapes the voice but is not spoken.")
    options = ["random"] + voices
    st.session_state[K + "voices"] = [v for v in st.session_state.get(K + "voices", []) if v in options] or ["random"]
    col1, col2 = st.columns([5, 2])
    col1.multiselect("Voices", options, key=K + "voices",
                     help="Each chosen voice is rendered in turn; 'random' uses the random latent generators.")
    col2.checkbox("Blend them into one voice", key=K + "combine_voices", help="Like 'a&b' on the command line.")
    fit_choice(K + "preset", choices["presets"], "ultra_fast")
    st.selectbox("Preset", choices["presets"], key=K + "preset")
    with st.expander("Advanced"):
        left, right = st.columns(2)
        with left:
            number("Candidates", "candidates", "How many clips per text chunk, best first (ranked by CLVP).")
            fit_choice(K + "latent_mode", list(range(len(LATENT_MODES))), 0)
            st.radio("Latent averaging", list(range(len(LATENT_MODES))), format_func=lambda i: LATENT_MODES[i],
                     key=K + "latent_mode", help="How the voice clips are turned into conditioning latents.")
            samplers = [PRESET_DEFAULT] + choices["samplers"]
            fit_choice(K + "sampler", samplers, PRESET_DEFAULT)
            st.radio("Sampler", samplers, key=K + "sampler", horizontal=True,
                     help="Diffusion sampler; dpm++2m needs conditioning-free guidance.")
            number("Steps", "steps", "Diffusion steps; 0 keeps the preset's.")
            number("Autoregressive samples", "ar_samples", "Samples drawn before CLVP picks the best; 0 keeps the "
                   "preset's.")
            number("Seed", "seed", "-1: a new random seed each run (the history shows it).")
        with right:
            fit_choice(K + "cond_free", list(COND_FREE_CHOICES), PRESET_DEFAULT)
            st.radio("Conditioning-free guidance", list(COND_FREE_CHOICES), key=K + "cond_free", horizontal=True)
            number("Minimum characters before splitting", "min_chars_to_split",
                   "Shorter text is one clip; longer text is split into chunks of about this size.", step=10)
            number("Maximum clip length (tokens)", "max_mel_tokens",
                   "Each token is 1/20 s; a clip stops here at the latest.", step=10)


def number(label: str, name: str, help: str, step: int = 1) -> None:
    low, high = RANGES[name]
    st.number_input(label, min_value=low, max_value=high, step=step, key=K + name, help=help)


def upload_section(settings: Settings, voices: list[str]) -> None:
    with st.expander("Create a voice from your clips"):
        st.caption(f"A few clips of one speaker, about 10 s each ({', '.join(ALLOWED_EXTENSIONS)}; at most "
                   f"{MAX_CLIP_BYTES // 2**20} MB each). Saved in {settings.extra_voices_dir or '(no directory set)'}.")
        name = st.text_input("Voice name", key="upload_name")
        files = st.file_uploader("Clips", type=list(ALLOWED_EXTENSIONS), accept_multiple_files=True,
                                 key="upload_files")
        add = st.checkbox("Add the clips to an existing voice", key="upload_add")
        if st.button("Create voice", key="upload_button"):
            clips = [(f.name, f.getvalue()) for f in (files or [])]
            try:
                created = create_voice(settings.extra_voices_dir, name, clips, known_voices=voices,
                                       add_to_existing=add)
            except UploadError as e:
                st.error(str(e).replace("\n", "  \n"))
            except OSError as e:
                st.error(f"Could not write the voice: {e.strerror or e} ({e.filename or ''}).")
            else:
                verb = "Added" if created.added_to_existing else "Created"
                st.session_state["_flash"] = (f"{verb} voice '{created.name}' with {len(created.files)} clip(s) "
                                              f"in {created.path.parent}.")
                st.session_state["_select_voice"] = created.name
                st.rerun()


# ---- generation ------------------------------------------------------------------------------------------------

def build_job(s: Settings) -> Job:
    overrides = {}
    if s.sampler != PRESET_DEFAULT:
        overrides["sampler"] = s.sampler
    if s.steps > 0:
        overrides["diffusion_iterations"] = int(s.steps)
    if s.cond_free != PRESET_DEFAULT:
        overrides["cond_free"] = s.cond_free == "on"
    if s.ar_samples > 0:
        overrides["num_autoregressive_samples"] = int(s.ar_samples)
    if s.max_mel_tokens != Settings.max_mel_tokens:
        overrides["max_mel_tokens"] = int(s.max_mel_tokens)
    if s.latent_mode:
        overrides["latent_averaging_mode"] = int(s.latent_mode)
    voices = list(s.voices) or ["random"]
    groups = [voices] if s.combine_voices and len(voices) > 1 else [[v] for v in voices]
    extra = [str(Path(s.extra_voices_dir).expanduser())] if s.extra_voices_dir and \
        Path(s.extra_voices_dir).expanduser().is_dir() else []
    return Job(text=s.text, groups=groups, preset=s.preset, candidates=int(s.candidates),
               seed=None if s.seed < 0 else int(s.seed), min_chars_to_split=int(s.min_chars_to_split),
               extra_voices_dirs=extra, overrides=overrides)


def generate(s: Settings) -> None:
    """Load (or reuse) the model and render the job; every problem ends as a message on the page."""
    if not s.text.strip():
        st.error("Type some text to speak first.")
        return
    if "random" in s.voices and s.combine_voices and len(s.voices) > 1:
        st.error("The random voice cannot be blended with other voices; untick 'Blend' or remove 'random'.")
        return
    if not redaction_ready(s):
        return
    status = st.status("Loading the models…", expanded=True)
    lock = generation_lock()
    if not lock.acquire(blocking=False):
        status.update(label="Waiting for another session's generation to finish…")
        lock.acquire()
    try:
        record = load_and_run(s, status)
    finally:
        lock.release()
    if warning := st.session_state.pop("_history_warning", None):
        st.warning(warning)
    if record is not None:
        summarise(record.to_dict(), status, record.seconds)


def redaction_ready(s: Settings) -> bool:
    """[bracketed] text: refused now (text only in brackets, no aligner offline) rather than after a clip."""
    from tortoise.utils.wav2vec_alignment import check_redaction
    try:
        chunks = split_text(s.text, int(s.min_chars_to_split))
        if any("[" in c or "]" in c for c in chunks):
            with st.spinner("Checking the aligner that cuts [bracketed] text…"):
                check_redaction(chunks, str(Path(s.models_dir).expanduser()) if s.models_dir else None)
    except Exception as e:
        st.error(readable_error(e))
        return False
    return True


def load_and_run(s: Settings, status):
    try:
        with status:
            tts = load_tts(s.models_dir, s.device, s.low_vram, s.kv_cache, s.half, s.ar_checkpoint.strip(),
                           s.diff_checkpoint.strip(), s.vocoder, s.backend, s.threads)
    except Exception as e:
        status.update(label="Could not load the models", state="error")
        st.error(f"Could not load the models: {readable_error(e)}")
        return None
    bar = status.progress(0.0, text="Starting")
    stage = status.empty()  # the pipeline's current stage (its progress callback)

    def on_progress(message: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{message} ({done}/{total} clips done)")
        status.update(label=message)

    def on_stage(name: str, done: int, total: int) -> None:
        stage.caption(f"{STAGE_LABELS.get(name, name)}: {done}/{total}")

    try:
        return run_job(tts, build_job(s), s.output_dir, on_progress, lambda r: keep_in_history(s, r.to_dict()),
                       on_stage)
    except Exception as e:  # nothing was rendered (bad text, unwritable output directory, ...)
        status.update(label="Generation failed", state="error")
        st.error(f"Generation failed: {readable_error(e)}")
        return None


def keep_in_history(s: Settings, entry: dict) -> None:
    """Put (or update) a run in the history and its file. No page elements here: this runs between clips, and a
    rerun or Stop that interrupts the generation must find every finished clip already recorded."""
    others = [e for e in st.session_state.get("history", []) if e.get("run_id") != entry["run_id"]]
    st.session_state["history"] = [entry] + others
    try:
        save_history(s.output_dir, st.session_state["history"])
    except OSError as e:
        st.session_state["_history_warning"] = f"Could not update the history file in {s.output_dir}: " \
                                               f"{e.strerror or e}."


def summarise(entry: dict, status, seconds: float) -> None:
    failed = len([c for c in entry["clips"] if c["error"]]) + len(entry["errors"])
    ok = len([c for c in entry["clips"] if c["file"]])
    status.update(label=f"Done in {seconds:.1f} s: {ok} clip(s), {failed} failure(s)",
                  state="error" if failed and not ok else "complete", expanded=False)


# ---- history ---------------------------------------------------------------------------------------------------

def show_entry(entry: dict) -> None:
    run_dir = Path(entry["run_dir"])
    voices = ", ".join(entry["voices"])
    text = entry["text"] if len(entry["text"]) <= 80 else entry["text"][:77] + "…"
    took = f"{entry.get('seconds', 0):.1f} s" if entry.get("finished", True) else "interrupted"
    st.markdown(f"**{text}**  \n{voices} · {entry['preset']} · seed {entry['seed']} · {entry['created']} · {took}")
    for message in entry["errors"]:
        st.error(message)
    for clip in entry["clips"]:
        label = f"{clip['voice']} · clip {clip['index'] + 1} · candidate {clip['candidate'] + 1}"
        if clip["error"]:
            st.error(f"{label}: {clip['error']}")
            continue
        show_audio(run_dir / clip["file"], label, entry["run_id"])
    for comb in entry["combined"]:
        show_audio(run_dir / comb["file"], f"{comb['voice']} · all clips joined · candidate {comb['candidate'] + 1}",
                   entry["run_id"])


def show_audio(path: Path, label: str, run_id: str) -> None:
    try:
        data = path.read_bytes()
    except OSError:
        st.caption(f"{label}: {path} is gone.")
        return
    st.caption(label)
    cols = st.columns([4, 1])
    cols[0].audio(data, format="audio/wav")
    cols[1].download_button("Download", data, file_name=path.name, mime="audio/wav", key=f"dl-{run_id}-{path.name}")


def history_section() -> None:
    history = st.session_state.get("history", [])
    if not history:
        return
    head, button = st.columns([4, 1])
    head.subheader("Results")
    if button.button("Clear list", key="clear_history", help="Forget the list; the files stay on disk."):
        st.session_state["history"] = []
        return
    for entry in history[:HISTORY_SHOWN]:
        with st.container(border=True):
            show_entry(entry)
    if len(history) > HISTORY_SHOWN:
        st.caption(f"{len(history) - HISTORY_SHOWN} older run(s) are in the output directory.")


# ---- the page --------------------------------------------------------------------------------------------------

def render() -> None:
    st.set_page_config(page_title="Tortoise TTS", page_icon="🐢", layout="wide", initial_sidebar_state="expanded")
    init_session()
    enforce_server_paths()
    ss = st.session_state
    if ss.get("_select_voice"):
        ss[K + "voices"] = [ss.pop("_select_voice")]
    st.title("Tortoise text to speech")
    if ss.get("_settings_warning"):
        st.warning(ss["_settings_warning"])
    if ss.get("_flash"):
        st.success(ss.pop("_flash"))
    try:
        choices = api_choices()
    except Exception as e:
        st.error(f"The Tortoise API could not be imported: {readable_error(e)}")
        return
    sidebar(choices)
    voices, note = known_voices(ss[K + "extra_voices_dir"])
    main_controls(choices, voices)
    if note:
        st.caption(note)
    original_voices.section()
    settings = current_settings()
    upload_section(settings, voices)
    remember_settings(settings)
    if st.button("Generate", type="primary", key="generate"):
        generate(settings)
    history_section()


if __name__ == "__main__":
    render()
