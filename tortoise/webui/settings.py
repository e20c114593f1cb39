"""The web UI's remembered settings: a small JSON file, written atomically, read forgivingly.

The fast fork kept these in a `shelve` database, which can corrupt and is not portable between Python builds.
Here a corrupt or half-written file never stops the app: it falls back to the defaults and says so once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

SETTINGS_ENV = "TURTLE_SETTINGS"  # path of the settings file; `turtle --settings PATH` sets it for the app
# Server-side paths come from `turtle`'s flags (which set these variables for the app) or the environment. Beyond
# localhost the page shows them read-only: a visitor must not point the server at its own files.
SERVER_PATH_ENV = {"models_dir": "TURTLE_MODELS_DIR", "extra_voices_dir": "TURTLE_VOICES_DIR",
                   "output_dir": "TURTLE_OUTPUT_DIR", "ar_checkpoint": "TURTLE_AR_CHECKPOINT",
                   "diff_checkpoint": "TURTLE_DIFF_CHECKPOINT"}
PATH_FIELDS = tuple(SERVER_PATH_ENV)
LOCK_PATHS_ENV = "TURTLE_LOCK_PATHS"  # "1": read-only paths even on localhost (e.g. behind a reverse proxy)
SETTINGS_VERSION = 1

LATENT_MODES = (  # index = latent_averaging_mode of get_conditioning_latents
    "original (one crop per clip)",
    "average over every 4.27 s chunk",
    "average per clip",
)
COND_FREE_CHOICES = ("preset default", "on", "off")
BACKEND_CHOICES = ("torch", "onnxruntime", "openvino")
RANGES = {  # inclusive bounds of the numeric controls (the page's number inputs use the same)
    "candidates": (1, 16), "latent_mode": (0, len(LATENT_MODES) - 1), "steps": (0, 1000), "ar_samples": (0, 1024),
    "seed": (-1, 2**32 - 1), "max_mel_tokens": (10, 600), "min_chars_to_split": (20, 1000), "threads": (0, 256),
}


def _user_dir(xdg_var: str, fallback: str) -> Path:
    """~/.config/tortoise or ~/.local/share/tortoise (XDG variables honoured)."""
    base = os.environ.get(xdg_var) or os.path.join(os.path.expanduser("~"), fallback)
    return Path(base) / "tortoise"


def default_settings_path() -> Path:
    env = os.environ.get(SETTINGS_ENV)
    if env:
        return Path(env).expanduser()
    return _user_dir("XDG_CONFIG_HOME", ".config") / "webui.json"


def default_voices_dir() -> str:
    """Where uploaded voices go unless the user names another directory."""
    return str(_user_dir("XDG_DATA_HOME", os.path.join(".local", "share")) / "voices")


def default_models_dir() -> str:
    """The package's convention: $TORTOISE_MODELS_DIR, else ~/.cache/tortoise/models."""
    from tortoise.utils.checkpoints import default_models_dir as models_dir
    return str(models_dir())


@dataclass
class Settings:
    """Every control of the page, with the value it starts from."""
    text: str = "The expressiveness of autoregressive transformers is remarkable."
    voices: list = field(default_factory=lambda: ["random"])
    combine_voices: bool = False          # False: render each voice; True: blend them into one ("a&b")
    extra_voices_dir: str = field(default_factory=default_voices_dir)
    preset: str = "ultra_fast"
    candidates: int = 1
    latent_mode: int = 0                  # index into LATENT_MODES
    sampler: str = "preset default"
    steps: int = 0                        # 0: the preset's diffusion_iterations
    ar_samples: int = 0                   # 0: the preset's num_autoregressive_samples
    max_mel_tokens: int = 500             # longest clip, in AR codes (1/20 s each); 500 is every preset's
    seed: int = -1                        # -1: a fresh random seed each run (shown in the history)
    output_dir: str = "results"
    models_dir: str = field(default_factory=default_models_dir)
    ar_checkpoint: str = ""
    diff_checkpoint: str = ""
    low_vram: bool = False
    half: bool = False
    kv_cache: bool = True
    cond_free: str = "preset default"    # one of COND_FREE_CHOICES
    min_chars_to_split: int = 200
    vocoder: str = ""                     # "" = the API's default vocoder
    device: str = "auto"
    backend: str = "torch"                # one of BACKEND_CHOICES: torch, or exported graphs on a runtime
    threads: int = 0                      # CPU threads; 0: the default (one per core this process may use)


def _in_range(name: str, value: int) -> bool:
    low, high = RANGES.get(name, (value, value))
    return low <= value <= high


def settings_from_dict(data: dict) -> tuple[Settings, list[str]]:
    """Known keys of the right type are taken; the rest is dropped and reported."""
    base = Settings()
    dropped = []
    kept = {}
    for f in fields(Settings):
        if f.name not in data:
            continue
        value, default = data[f.name], getattr(base, f.name)
        if isinstance(default, bool) and isinstance(value, bool):
            kept[f.name] = value
        elif isinstance(default, int) and not isinstance(default, bool) and isinstance(value, int) \
                and not isinstance(value, bool) and _in_range(f.name, value):
            kept[f.name] = value
        elif isinstance(default, str) and isinstance(value, str):
            kept[f.name] = value
        elif isinstance(default, list) and isinstance(value, list) and all(isinstance(v, str) for v in value):
            kept[f.name] = list(value)
        else:
            dropped.append(f.name)
    return dataclasses.replace(base, **kept), dropped


def load_settings(path: Path | None = None) -> tuple[Settings, str | None]:
    """(settings, warning): a missing file gives the defaults silently; a corrupt one the defaults and a warning."""
    path = Path(path) if path is not None else default_settings_path()
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), None
    except OSError as e:
        return Settings(), f"Could not read the settings file {path} ({e.strerror}); using the defaults."
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return Settings(), (f"The settings file {path} is corrupt ({e}); using the defaults. "
                            f"It will be rewritten the next time a setting changes.")
    settings, dropped = settings_from_dict(data.get("settings", {}) if "settings" in data else data)
    warning = None
    if dropped:
        warning = f"Ignored invalid values in {path}: {', '.join(sorted(dropped))}; using their defaults."
    return settings, warning


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    path = Path(path) if path is not None else default_settings_path()
    payload = {"version": SETTINGS_VERSION, "settings": dataclasses.asdict(settings)}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


# ---- server-side paths -------------------------------------------------------------------------------------------

def is_local_address(address: str | None) -> bool:
    """Whether a server listening on `address` is reachable from this machine only. Streamlit listens on every
    interface when no address is set, so None / "" is not local."""
    import ipaddress
    host = (address or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from elsewhere


def paths_locked(address: str | None, env=None) -> bool:
    """Read-only paths in the page: always beyond localhost, and on localhost when `TURTLE_LOCK_PATHS=1`."""
    env = os.environ if env is None else env
    return env.get(LOCK_PATHS_ENV, "").strip().lower() in ("1", "true", "yes", "on") or not is_local_address(address)


def server_paths(env=None) -> dict[str, str]:
    """The paths the server was started with (`turtle --models-dir` ... or the TURTLE_* variables), by field."""
    env = os.environ if env is None else env
    return {name: env[var] for name, var in SERVER_PATH_ENV.items() if env.get(var, "").strip()}


def pinned_paths(locked: bool, env=None) -> dict[str, str]:
    """Path fields the page may not take from the settings file or a visitor: those the server set, and when
    `locked` every path (the server's value, else the default: $TORTOISE_MODELS_DIR, ~/.local/share/tortoise/voices,
    results)."""
    given = server_paths(env)
    if not locked:
        return given
    defaults = Settings()
    return {name: given.get(name, getattr(defaults, name)) for name in PATH_FIELDS}


def with_server_paths(settings: Settings, locked: bool, env=None) -> Settings:
    return dataclasses.replace(settings, **pinned_paths(locked, env))
