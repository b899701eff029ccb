"""``X509``: a client certificate, as azure-iot-device names it (kept apart
from the TLS code so that importing the client does not load ``ssl``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["X509"]


@dataclass(frozen=True)
class X509:
    """A client certificate, as in azure-iot-device: file paths and an optional
    pass phrase for the key."""

    cert_file: str
    key_file: str
    pass_phrase: str | None = None

    def __repr__(self) -> str:  # never show the pass phrase
        return f"X509(cert_file={self.cert_file!r}, key_file={self.key_file!r})"
