from typing import Any

_Buffer = bytes | bytearray | memoryview

def apply_mask(data: _Buffer, mask: _Buffer, /) -> bytes: ...
def utf8_feed(state: int, data: _Buffer, /) -> int: ...
def encode_frame(
    opcode: int,
    payload: _Buffer,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes: ...
def scan_frames(
    buf: _Buffer,
    pos: int,
    events: list[Any],
    masked: bool,
    limit: int,
    text_type: type,
    binary_type: type,
    /,
) -> int: ...
