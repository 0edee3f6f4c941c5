"""The registry of error and disconnect codes (backchannel.hub.codes) against the rules
and tables of docs/protocol.md."""

from __future__ import annotations

import re
from pathlib import Path

from backchannel.hub import codes
from backchannel.hub.codes import DISCONNECTS, ERRORS, Disconnect, Error

DOC = Path(__file__).parents[2] / "docs" / "protocol.md"

# Every constant of the module, by name.
ERROR_NAMES = {name: v for name, v in vars(codes).items() if isinstance(v, Error)}
DISCONNECT_NAMES = {name: v for name, v in vars(codes).items() if isinstance(v, Disconnect)}


def documented_reconnect(code: int) -> bool:
    """The rule of docs/protocol.md, "Codes"."""
    return 3000 <= code < 3500 or 4000 <= code < 4500


def doc_table(heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first table after a
    heading of docs/protocol.md."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r}"
    assert set(rows[1]) == {"---"}
    return rows[2:]


def parse_table(heading: str, flag: str) -> dict[int, tuple[str, str, bool]]:
    table: dict[int, tuple[str, str, bool]] = {}
    for row in doc_table(heading):
        assert len(row) == 4, row
        code, name, meaning, value = row
        assert re.fullmatch(r"\d+", code), row
        assert re.fullmatch(r"`[A-Z_]+`", name), row
        assert value in ("yes", "no"), f"{flag} must be yes or no: {row}"
        assert int(code) not in table, f"{code} twice in the table"
        table[int(code)] = (name.strip("`"), meaning, value == "yes")
    return table


def test_registries_hold_every_constant() -> None:
    assert sorted(e.code for e in ERROR_NAMES.values()) == sorted(ERRORS)
    assert sorted(d.code for d in DISCONNECT_NAMES.values()) == sorted(DISCONNECTS)
    assert all(ERRORS[code].code == code for code in ERRORS)
    assert all(DISCONNECTS[code].code == code for code in DISCONNECTS)


def test_codes_are_unique() -> None:
    error_codes = [e.code for e in ERROR_NAMES.values()]
    disconnect_codes = [d.code for d in DISCONNECT_NAMES.values()]
    assert len(error_codes) == len(set(error_codes))
    assert len(disconnect_codes) == len(set(disconnect_codes))
    assert not set(error_codes) & set(disconnect_codes)


def test_ranges() -> None:
    for error in ERRORS.values():
        assert 100 <= error.code <= 1999
        assert error.code <= 999, "1000-1999 are the application's"
    for disconnect in DISCONNECTS.values():
        assert 3000 <= disconnect.code <= 4999
        assert disconnect.code <= 3999, "4000-4999 are the application's"


def test_messages() -> None:
    for error in ERRORS.values():
        assert error.message
        assert isinstance(error.temporary, bool)
        assert error.with_message("other") == Error(error.code, "other", error.temporary)
    for disconnect in DISCONNECTS.values():
        assert disconnect.reason
        # Over WebSocket the reason goes in the close frame: at most 123 bytes.
        assert len(disconnect.reason.encode()) <= 123


def test_reconnect_follows_the_ranges() -> None:
    for code in range(3000, 5000):
        assert Disconnect(code, "x").reconnect is documented_reconnect(code), code


def test_registry_reconnect() -> None:
    assert {d.code for d in DISCONNECTS.values() if d.reconnect} == set(range(3000, 3007))
    assert {d.code for d in DISCONNECTS.values() if not d.reconnect} == set(range(3500, 3506))


def test_error_table_matches_registry() -> None:
    table = parse_table("### Error codes", "temporary")
    assert sorted(table) == sorted(ERRORS)
    for code, (name, meaning, temporary) in table.items():
        assert ERROR_NAMES.get(name) == ERRORS[code], f"{code}: {name}"
        assert temporary is ERRORS[code].temporary, code
        assert meaning


def test_disconnect_table_matches_registry() -> None:
    table = parse_table("### Disconnect codes", "reconnect")
    assert sorted(table) == sorted(DISCONNECTS)
    for code, (name, meaning, reconnect) in table.items():
        assert DISCONNECT_NAMES.get(name) == DISCONNECTS[code], f"{code}: {name}"
        assert reconnect is DISCONNECTS[code].reconnect is documented_reconnect(code), code
        assert meaning


def test_doc_states_the_ranges() -> None:
    text = DOC.read_text(encoding="utf-8").replace("\u2013", "-")  # en dashes in ranges
    for line in (
        "- 100-999: the hub's own",
        "- 1000-1999: the application's",
        "- 3000-3499: the client should reconnect",
        "- 3500-3999: the client should not reconnect",
        "- 4000-4499: the application's; the client should reconnect.",
        "- 4500-4999: the application's; the client should not reconnect.",
    ):
        assert line in text
