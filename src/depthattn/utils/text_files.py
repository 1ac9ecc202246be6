"""Reading text that people hand in (corpora, config files): UTF-8 or a clear error."""

from __future__ import annotations

from pathlib import Path

from depthattn.utils.errors import DepthAttnError


def read_utf8(path: str | Path, what: str = "file") -> str:
    """The text of ``path``; a file that is not UTF-8 is refused with the offending byte and
    its offset, rather than silently decoded with replacement characters."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise DepthAttnError(f"{what} {path} is not UTF-8 text: byte 0x{byte:02x} at offset "
                             f"{error.start} ({error.reason}); convert it to UTF-8, e.g. "
                             f"`iconv -f latin1 -t utf-8`") from None
