"""The files of an image set, read alike from a zip archive or from its extracted folder.

Every file is named by its POSIX path inside the archive, which begins with the archive's top
folder (``images_background/Latin/character01/0640_01.png``); a folder given as the source
plays the part of that top folder, so a zip and its extraction list the same paths. Hidden
files (``.DS_Store``) and macOS resource forks (``__MACOSX/``) are skipped.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path
from types import TracebackType

from distmeta.errors import DataError

__all__ = ["ImageArchive", "content_sha256", "file_sha256"]

_CHUNK = 1 << 20


def _hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(digests: dict[str, str]) -> str:
    """The sha256 of the ``sha256sum``-style listing ``"<sha256>  <path>\\n"`` sorted by path.

    It names the files' contents whatever the container (zip settings, dates, extraction), and
    for a whole Omniglot archive equals the ``content-sha256`` of its MANIFEST.
    """
    listing = "".join(f"{digests[path]}  {path}\n" for path in sorted(digests))
    return hashlib.sha256(listing.encode()).hexdigest()


class ImageArchive:
    """Read-only access to the files of a zip archive or a folder.

    Args:
        src: A ``.zip`` file or a folder.

    Attributes:
        paths: Every file's path, sorted, hidden files left out.
        top: The top folder (a folder source's own name; a zip's first path's first part).
        sha256: sha256 of the zip file's bytes; ``None`` for a folder.

    Raises:
        DataError: ``src`` does not exist, or is a file that is not a readable zip archive
            (truncated, corrupt, or another kind of file).
    """

    def __init__(self, src: str | Path):
        self.src = Path(src)
        self._zip: zipfile.ZipFile | None = None
        if self.src.is_dir():
            self.top = self.src.resolve().name
            root = self.src.resolve().parent
            files = (p for p in self.src.resolve().rglob("*") if p.is_file())
            self.paths = sorted(
                path
                for path in (p.relative_to(root).as_posix() for p in files)
                if not _hidden(path)
            )
            self.sha256: str | None = None
        elif self.src.is_file():
            try:
                self._zip = zipfile.ZipFile(self.src)
                names = [info.filename for info in self._zip.infolist() if not info.is_dir()]
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
                raise DataError(
                    f"{self.src} is not a readable zip archive (truncated or corrupt?): {error}"
                ) from None
            self.paths = sorted(name for name in names if not _hidden(name))
            self.top = self.paths[0].split("/")[0] if self.paths else self.src.stem
            self.sha256 = file_sha256(self.src)
        else:
            raise DataError(f"no such file or folder: {self.src}")

    def location(self, path: str) -> str:
        """Where ``path`` is, for error messages: ``archive.zip:path`` or a filesystem path."""
        if self._zip is not None:
            return f"{self.src}:{path}"
        return str(self.src.resolve().parent / path)

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path``; a corrupt zip entry raises :class:`DataError`."""
        try:
            if self._zip is not None:
                return self._zip.read(path)
            return (self.src.resolve().parent / path).read_bytes()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
            raise DataError(f"{self.location(path)}: cannot be read (corrupt?): {error}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
