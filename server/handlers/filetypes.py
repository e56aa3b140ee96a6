"""The file types obrol accepts (the allow-list README.md documents) and their signatures.

A type with a signature is accepted only if the upload's first bytes carry it. Everything is
served as an attachment in a sandbox (see server.api.files), but clients also show files
inline (image previews, players), so nothing that can hold script is on the list: no HTML,
no XML, no SVG (an SVG is an XML document that can run script and fetch other resources; it
travels as `application/octet-stream`, which no client renders), no JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable

Signature = Callable[[bytes], bool]

SNIFF_BYTES = 16  # enough for every check below


def _starts(*prefixes: bytes) -> Signature:
    return lambda head: head.startswith(prefixes)


def _iso_media(*brands: bytes) -> Signature:
    """ISO base media files (MP4, M4A, HEIF): an `ftyp` box first, brand from `brands`."""
    return lambda head: head[4:8] == b"ftyp" and (not brands or head[8:12] in brands)


def _quicktime(head: bytes) -> bool:
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _riff(kind: bytes) -> Signature:
    return lambda head: head[:4] == b"RIFF" and head[8:12] == kind


def _mpeg_audio(head: bytes) -> bool:
    return head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] >= 0xE0)


def _adts(head: bytes) -> bool:
    return head.startswith(b"ADIF") or (len(head) > 1 and head[0] == 0xFF and head[1] >= 0xF0)


_ZIP = _starts(b"PK\x03\x04", b"PK\x05\x06")
_OLE = _starts(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # legacy Office documents
_EBML = _starts(b"\x1a\x45\xdf\xa3")  # WebM
_OGG = _starts(b"OggS")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_OOXML = "application/vnd.openxmlformats-officedocument"
_OPENDOCUMENT = "application/vnd.oasis.opendocument"

# mime type -> signature check, or None where the type has none (text, generic binary).
ALLOWED: dict[str, Signature | None] = {
    "image/png": _starts(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": _starts(b"\xff\xd8\xff"),
    "image/gif": _starts(b"GIF87a", b"GIF89a"),
    "image/webp": _riff(b"WEBP"),
    "image/heic": _iso_media(*_HEIF_BRANDS),
    "image/heif": _iso_media(*_HEIF_BRANDS),
    "image/avif": _iso_media(b"avif", b"avis"),
    "application/pdf": _starts(b"%PDF-"),
    "text/plain": None,
    "text/csv": None,
    "video/mp4": _iso_media(),
    "video/quicktime": _quicktime,
    "video/webm": _EBML,
    "audio/mp4": _iso_media(),
    "audio/aac": _adts,
    "audio/mpeg": _mpeg_audio,
    "audio/ogg": _OGG,
    "audio/opus": _OGG,
    "audio/webm": _EBML,
    "audio/wav": _riff(b"WAVE"),
    "application/zip": _ZIP,
    "application/msword": _OLE,
    "application/vnd.ms-excel": _OLE,
    "application/vnd.ms-powerpoint": _OLE,
    f"{_OOXML}.wordprocessingml.document": _ZIP,
    f"{_OOXML}.spreadsheetml.sheet": _ZIP,
    f"{_OOXML}.presentationml.presentation": _ZIP,
    f"{_OPENDOCUMENT}.text": _ZIP,
    f"{_OPENDOCUMENT}.spreadsheet": _ZIP,
    f"{_OPENDOCUMENT}.presentation": _ZIP,
    "application/octet-stream": None,
}

# Other names clients send for types on the list.
ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "application/x-zip-compressed": "application/zip",
}


def accepted_type(declared: str) -> str | None:
    """The allow-listed type a `Content-Type` header names (parameters dropped), or None."""
    mime = declared.split(";", 1)[0].strip().lower()
    mime = ALIASES.get(mime, mime)
    return mime if mime in ALLOWED else None


def matches_signature(mime: str, head: bytes) -> bool:
    """True unless `mime` has a signature that `head` (the first SNIFF_BYTES) lacks."""
    check = ALLOWED.get(mime)
    return check is None or check(head)


def served_type(stored: str) -> str:
    """The type to serve a stored file as: its own if still allowed, else generic binary."""
    return stored if stored in ALLOWED else "application/octet-stream"
