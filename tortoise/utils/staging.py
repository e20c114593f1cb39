"""Hidden staging directories named after the process that made them, and the clean-up of the ones a killed process
left behind. Used by the voices fetch (``.partial.<pid>.*``) and the graph export cache (``.<key>.tmp-<pid>.*``)."""
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

STALE_SECONDS = 24 * 3600  # where a process cannot be probed (not POSIX), a staging directory this old is abandoned


def pid_alive(pid):
    """True if process ``pid`` exists, False if not, None where that cannot be asked without harm (Windows)."""
    if os.name != "posix":
        return None  # os.kill(pid, 0) would terminate the process on Windows: decide by age instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale(root, prefix):
    """Remove the directories in ``root`` named ``prefix<pid>.*`` whose process is gone (or, where that cannot be
    asked, that are older than :data:`STALE_SECONDS`); this process's own are kept. -> the paths removed."""
    removed = []
    for path in root.glob(prefix + "*"):
        m = re.match(re.escape(prefix) + r"(\d+)\.", path.name)
        if not m or not path.is_dir() or int(m.group(1)) == os.getpid():
            continue
        alive = pid_alive(int(m.group(1)))
        if alive is False or (alive is None and time.time() - path.stat().st_mtime > STALE_SECONDS):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_atomically(path, write):
    """Make ``path`` through ``write(temporary path)``, a hidden file beside it, then rename it into place: a reader
    never sees half a file, and a failure (or an interrupt) leaves nothing behind. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
