"""Pure-Python twin of ``_core/resp.pyx`` (see its header for the wire format).

Identical output; used as the test oracle and when the extension is not built.
"""

from __future__ import annotations

IMPLEMENTATION = "python"

Arg = bytes | str | int


def _arg(arg: object) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return str(arg).encode()
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    msg = f"RESP argument must be bytes, str or int, not {type(arg).__name__}"
    raise TypeError(msg)


def encode_commands(commands: list) -> bytes:  # type: ignore[type-arg]
    parts: list[bytes] = []
    for cmd in commands:
        parts.append(b"*%d\r\n" % len(cmd))
        for arg in cmd:
            data = _arg(arg)
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def encode_command(*args: Arg) -> bytes:
    return encode_commands([args])
