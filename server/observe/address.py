"""The dashboard's HOST:PORT: its default and its parsing, apart from the server so the flags load without aiohttp."""

from __future__ import annotations

DEFAULT_ADDRESS = "127.0.0.1:0"


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--dashboard {address!r}: expected HOST:PORT with a port 0-65535 (0: any free port), "
                         "e.g. 127.0.0.1:8081")
    return host.strip("[]"), int(port)
