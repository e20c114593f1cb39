"""``tortoise-export --format ggml|gguf``: the files tortoise.cpp loads (or GGUF), cached like the ONNX graphs.

Layout (``root`` as for the graphs: ``<models dir>/exported`` or ``$TORTOISE_EXPORT_DIR``)::

    root/<format>-<network>/<key>/fingerprint.json
    root/<format>-<network>/<key>/<format>/ggml-model.bin | ggml-diffusion-model.bin | ggml-vocoder-model.bin
                                          (gguf: tortoise-<network>.gguf)

``key`` hashes the checkpoint file's contents, the network config, the package / torch / gguf versions, the source
of the writer (`tortoise.export.ggml`), the format and, for the diffusion model, the voice latent it carries: change
any of them and the file is written again. The file is written into a temporary directory beside its final place,
read back and compared with the network's tensors, then renamed into place: a file in the cache is always complete.
An existing file is kept (reported as cached) unless ``force``.
"""
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np

import tortoise.export.cache as cache
import tortoise.export.ggml as ggml
from tortoise.export.exporter import ExportError, ExportResult, load_network, network_source

FORMATS = ("ggml", "gguf")


def _file_name(network, fmt):
    return (ggml.MODEL_FILES if fmt == "ggml" else ggml.GGUF_FILES)[network]


def resolve_voice(voice, voices_dir=None, models_dir=None):
    """``voice``: a ``.pth`` latent pair (what tortoise-get-conditioning-latents writes) or the name of a voice whose
    directory holds one -> (autoregressive latent, diffusion latent), checked against the models' widths."""
    from tortoise.utils.voices import VoiceError, expected_latent_widths, load_latents, load_voice
    widths = expected_latent_widths(models_dir)
    try:
        if Path(voice).suffix == ".pth" and Path(voice).is_file():
            return load_latents(voice, widths)
        dirs = [d for d in (voices_dir or "").split(",") if d]
        clips, latents = load_voice(voice, dirs, latent_widths=widths)
    except VoiceError as e:
        raise ExportError(str(e)) from None
    if latents is None:
        raise ExportError(f"voice {voice!r} is clips, not latents: run tortoise-get-conditioning-latents --format ggml "
                          f"-v {voice} first and pass --voice with the .pth it writes")
    return latents


def _source_digest():
    """sha256 of the writer's sources: a change to how files are written invalidates the cached ones."""
    h = hashlib.sha256()
    for f in (Path(ggml.__file__), Path(__file__)):
        h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(network, fmt, files, config, root, voice_digest):
    """What a file's cache key is the hash of."""
    return {
        "component": f"{fmt}-{network}",
        "format": fmt,
        "checkpoint": {Path(f).name: cache.file_digest(f, root) for f in files},
        "config": config,
        "versions": {name: cache.version(name) for name in (cache.PACKAGE, "torch", "gguf")},
        "sources": _source_digest(),
        "voice": voice_digest,
    }


def _read_back(path, fmt, tensors):
    """Parse the written file and compare every tensor with what was meant to be written (exact, f32)."""
    if fmt == "ggml":
        got = ggml.read_ggml(path)
    else:
        import gguf  # the `ggml` extra
        got = {t.name: np.asarray(t.data).reshape(tuple(reversed([int(n) for n in t.shape])))
               for t in gguf.GGUFReader(str(path)).tensors}
    if list(got) != list(tensors):
        raise ExportError(f"{path}: read back {len(got)} tensors, wrote {len(tensors)}; nothing was kept")
    for name, want in tensors.items():
        if got[name].shape != want.shape or not np.array_equal(got[name], want):
            raise ExportError(f"{path}: tensor {name} reads back differently from what was written; nothing was kept")


def export_file(network, models_dir=None, fmt="ggml", *, output_dir=None, checkpoint=None, voice=None,
                voices_dir=None, force=False, any_shape=False):
    """Write (or find in the cache) ``network``'s tortoise.cpp model file (``ggml``) or GGUF -> ExportResult."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose ggml or gguf")
    if network not in ggml.NETWORKS:
        raise ExportError(f"tortoise.cpp has no {network!r} model; choose from {', '.join(ggml.NETWORKS)}")
    start = time.perf_counter()
    root = Path(output_dir).expanduser() if output_dir else cache.default_root(models_dir)
    files, config = network_source(network, models_dir, checkpoint)
    latent = None
    if network == "diffusion":
        if voice is None:
            raise ExportError("diffusion: ggml-diffusion-model.bin carries one voice's diffusion latent (tortoise.cpp "
                              "reads it from there): pass --voice NAME or --voice FILE.pth")
        latent = resolve_voice(voice, voices_dir, models_dir)[1]
    fp = fingerprint(network, fmt, files, config, root, ggml.latent_digest(latent) if latent is not None else None)
    entry = cache.Entry(root, f"{fmt}-{network}", cache.key_of(fp))
    final = entry.dir / fmt
    path = final / _file_name(network, fmt)
    if path.is_file() and not force:
        return ExportResult(network, fmt, path, True, "read back", [], time.perf_counter() - start)
    tensors = _tensors(network, fmt, models_dir, checkpoint, latent, any_shape)
    entry.dir.mkdir(parents=True, exist_ok=True)
    cache.write_json_atomic(entry.dir / "fingerprint.json", fp)
    return _write_and_publish(network, fmt, tensors, config, entry, final, path, start)


def _tensors(network, fmt, models_dir, checkpoint, latent, any_shape):
    net = load_network(network, models_dir, checkpoint)
    try:
        tensors = ggml.network_tensors(network, net, latent)
        if fmt == "ggml" and not any_shape:
            ggml.check_tortoise_cpp(network, tensors)
    except ggml.GgmlError as e:
        raise ExportError(str(e)) from None
    return tensors


def _write_and_publish(network, fmt, tensors, config, entry, final, path, start):
    tmp = entry.temp_dir()
    try:
        out_dir = tmp / fmt
        out_dir.mkdir()
        target = out_dir / path.name
        if fmt == "ggml":
            ggml.write_ggml(target, tensors)
        else:
            ggml.write_gguf(target, network, tensors, config)
        _read_back(target, fmt, tensors)
        if final.exists():  # force: the new file replaces the old one
            shutil.rmtree(final)
        cached = not cache.publish(out_dir, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = path.stat().st_size / 2 ** 20
    return ExportResult(network, fmt, path, cached, "read back", [], time.perf_counter() - start,
                        f"{len(tensors)} tensors, {size:.1f} MiB")
