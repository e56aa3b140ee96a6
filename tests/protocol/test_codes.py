"""Error codes and close codes: complete, in range, and carried by every protocol error."""

from __future__ import annotations

import re
from pathlib import Path

from protocol.codes import CLOSE_CODE_FOR, CloseCode, ErrorCode
from protocol.errors import LocalProtocolError, ObrolError, ProtocolError, RemoteProtocolError

DOC = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text(encoding="utf-8")


def test_every_error_code_has_a_close_code_hint() -> None:
    assert set(CLOSE_CODE_FOR) == set(ErrorCode)


def test_our_close_codes_are_in_the_private_range() -> None:
    for code in CloseCode:
        assert code in range(4000, 5000) or code in range(1000, 1016), code


def test_protocol_md_documents_every_code_with_its_close_code() -> None:
    for code in ErrorCode:
        row = re.search(rf"^\| `{code.value}` \| (\d+) \|", DOC, re.MULTILINE)
        assert row is not None, f"{code.value} missing from PROTOCOL.md §7.1"
        assert int(row.group(1)) == CLOSE_CODE_FOR[code], code.value
    for close in CloseCode:
        assert re.search(rf"^\| {close.value} \| {close.name} \|", DOC, re.MULTILINE), close.name


def test_protocol_errors_carry_code_hint_and_reference() -> None:
    error = RemoteProtocolError(ErrorCode.CONSENT_REQUIRED, "no tag", ref="c1", ref_type="send")
    assert isinstance(error, ProtocolError) and isinstance(error, ObrolError)
    assert (error.code, error.close_code, error.ref, error.ref_type) == (
        ErrorCode.CONSENT_REQUIRED,
        CloseCode.POLICY_VIOLATION,
        "c1",
        "send",
    )
    assert str(error) == "consent_required: no tag"
    local = LocalProtocolError(ErrorCode.INTERNAL, "misuse", close_code=CloseCode.NORMAL)
    assert local.close_code is CloseCode.NORMAL
    assert not isinstance(local, RemoteProtocolError)
