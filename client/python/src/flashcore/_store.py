"""The client's disk cache of kernel handles, by key, plus an index from request to key.

Layout under the folder (default $FLASHCORE_CLIENT_CACHE, else
$XDG_CACHE_HOME/flashcore-client, else ~/.cache/flashcore-client):

    handles/<key[0:2]>/<key>.pb   a serialized KernelHandle with its cubin
    index/<sha256 of a request>   the key last resolved for that request

Files are written to a temporary name and renamed, so a reader sees a whole
file or none; a handle whose cubin does not match its own cubin_sha256 is
removed and treated as a miss. An unwritable folder is not an error: the
handle is kept in memory only (the caller logs that once).
"""

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional

from ._stubs import pb


def default_dir() -> Path:
    if os.environ.get("FLASHCORE_CLIENT_CACHE"):
        return Path(os.environ["FLASHCORE_CLIENT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashcore-client"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class HandleStore:
    def __init__(self, folder: Optional[os.PathLike] = None):
        self.folder = Path(folder) if folder is not None else default_dir()

    def _handle_path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError("not a kernel key: %r" % key)
        return self.folder / "handles" / key[:2] / (key + ".pb")

    def get(self, key: str) -> Optional[pb.KernelHandle]:
        path = self._handle_path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        handle = pb.KernelHandle()
        try:
            handle.ParseFromString(data)
        except Exception:  # a truncated or foreign file: drop it, ask the daemon again
            handle = None
        if (handle is None or handle.key != key or not handle.cubin
                or hashlib.sha256(handle.cubin).hexdigest() != handle.cubin_sha256):
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return handle

    def put(self, handle: pb.KernelHandle) -> None:
        """Raises OSError when the folder cannot be written."""
        _write_atomically(self._handle_path(handle.key), handle.SerializeToString())

    @staticmethod
    def _index_name(request: str) -> str:
        return hashlib.sha256(request.encode()).hexdigest()

    def lookup(self, request: str) -> Optional[str]:
        """The key last stored for ``request`` (a canonical text), if any."""
        path = self.folder / "index" / self._index_name(request)
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return None
        # Line 1 is the request itself (a hash collision is then a miss), line 2 the key.
        if len(lines) >= 2 and lines[0] == request:
            return lines[1]
        return None

    def remember(self, request: str, key: str) -> None:
        _write_atomically(self.folder / "index" / self._index_name(request),
                          ("%s\n%s\n" % (request, key)).encode())
