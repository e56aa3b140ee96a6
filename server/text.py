"""What text obrol accepts from a client: never NUL, and no control characters in one-line
fields (names, titles, emails, file names, query parameters).

PostgreSQL refuses NUL in `text` outright, and a line break, an escape sequence or a bidi
override in a name or a file name is never meant: it is used to forge log lines or to make
`invoice\u202efdp.exe` read as a PDF. Refused: C0 and C1 controls, DEL, the Unicode line and
paragraph separators, the bidi embedding/override/isolate controls (the marks U+200E/U+200F
stay allowed), and lone surrogates (not encodable as UTF-8).
"""

from __future__ import annotations

import re

_NOT_IN_ANY_TEXT = re.compile("[\x00\ud800-\udfff]")
_NOT_IN_ONE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def text_problem(value: str, *, one_line: bool = True) -> str | None:
    """Why `value` may not be accepted, or None if it may."""
    if one_line and _NOT_IN_ONE_LINE.search(value):
        return "must not contain control characters"
    if _NOT_IN_ANY_TEXT.search(value):
        return "must not contain NUL characters"
    return None
