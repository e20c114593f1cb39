"""Where exported graphs live, and the fingerprint that keeps a stale graph from ever being run.

Layout (``root`` defaults to ``<models dir>/exported``, or ``$TORTOISE_EXPORT_DIR``)::

    root/<component>/<key>/fingerprint.json          what the key was computed from (for people)
    root/<component>/<key>/onnx/model.onnx           the ONNX graph (+ model.onnx.data: its weights)
    root/<component>/<key>/onnx/verified-onnxruntime-<version>.json   ONNX Runtime's verification of it
    root/<component>/<key>/openvino-<version>[-fp16]/model.xml, .bin, verified.json

``key`` hashes the checkpoint files' contents, the network config, the package, torch, onnx and onnxscript
versions, the source of the networks and of the export forms, the opset, the shapes (or "dynamic") and the dtype:
change any of them and the graph is exported again. A runtime's version names its verification stamp (ONNX
Runtime) or its directory (OpenVINO IR, which the converter writes per version).

Everything is written into a temporary directory beside its final place, verified, then renamed: a graph the
pipeline would pick up (an ``onnx`` directory with this ONNX Runtime's stamp, an ``openvino-*`` directory) exists
only once it passed verification (or verification was skipped on purpose, which the stamp records).
"""
import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

from tortoise.utils.staging import remove_stale

PACKAGE = "tortoise-tts-xpu"
ENV_DIR = "TORTOISE_EXPORT_DIR"
CHECKSUMS = "checksums.json"


def default_root(models_dir):
    """``$TORTOISE_EXPORT_DIR``, else ``<models_dir>/exported`` (beside the checkpoints)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    from tortoise.utils.checkpoints import default_models_dir
    return Path(models_dir or default_models_dir()).expanduser() / "exported"


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def write_json_atomic(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def file_digest(path, root):
    """sha256 of a checkpoint file's contents, memoised in ``root/checksums.json`` by (path, size, mtime): a
    replaced or modified file is hashed again, an unchanged one costs a stat."""
    path = Path(path).resolve()
    st = path.stat()
    memo_path = Path(root) / CHECKSUMS
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(str(path))
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    digest = _sha256_file(path)
    memo[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        write_json_atomic(memo_path, memo)
    except OSError:
        pass  # a read-only cache still works, it just hashes again next time
    return digest


def source_digest():
    """sha256 over the sources that decide what a graph computes: the networks, the export forms and the built
    transformer."""
    here = Path(__file__).resolve().parent
    files = sorted((here.parent / "models").glob("*.py")) + [here / n for n in ("graphs.py", "components.py",
                                                                                 "transformer.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(component, files, config, root, *, opset, dynamic, shapes, dtype):
    """The dict a graph's key is the hash of. ``files``: the checkpoint files it is exported from."""
    from tortoise.export.graphs import GRAPH_FORMAT
    return {
        "component": component,
        "graph_format": GRAPH_FORMAT,
        "checkpoint": {Path(f).name: file_digest(f, root) for f in files},
        "config": config,
        "versions": {name: version(name) for name in (PACKAGE, "torch", "onnx", "onnxscript")},
        "sources": source_digest(),
        "opset": opset,
        "shapes": "dynamic" if dynamic else shapes,
        "dtype": dtype,
    }


def key_of(fp):
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


TEMP_PREFIX = ".tmp-"  # + pid + "." + key + ".": an export in progress (hidden; removed once its process is gone)


class Entry:
    """The directory of one fingerprinted graph and the runtime artefacts made from it."""

    def __init__(self, root, component, key):
        self.root = Path(root)
        self.dir = self.root / component / key
        self.component, self.key = component, key

    @property
    def onnx_dir(self):
        return self.dir / "onnx"

    @property
    def onnx(self):
        return self.onnx_dir / "model.onnx"

    def ort_stamp(self, ort_version):
        return self.onnx_dir / f"verified-onnxruntime-{ort_version}.json"

    def openvino_dir(self, ov_version, half=False):
        return self.dir / f"openvino-{ov_version}{'-fp16' if half else ''}"

    def temp_dir(self):
        """A fresh directory beside the entry (same filesystem, so the final rename is atomic), named after this
        process; those that killed exports left anywhere in the cache (their process gone: any graph, any key) are
        removed first."""
        parent = self.dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        for component_dir in (d for d in self.root.iterdir() if d.is_dir()):
            remove_stale(component_dir, TEMP_PREFIX)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f"{TEMP_PREFIX}{os.getpid()}.{self.key}."))


def publish(tmp, final):
    """Rename directory ``tmp`` to ``final``; -> False if another process published it first (ours is dropped)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if final.exists():
            return False
        raise
