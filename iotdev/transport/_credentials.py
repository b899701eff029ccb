"""``X509``: a client certificate, as azure-iot-device names it (kept apart
from the TLS code so that importing the client does not load ``ssl``)."""

from __future__ import annotations

from iotdev_mqtt._records import record, set_field

__all__ = ["X509"]


@record
class X509:
    """A client certificate, as in azure-iot-device: file paths and an optional
    pass phrase for the key; read-only, as in v2 (``certificate_file``,
    ``key_file``, ``pass_phrase``; ``cert_file`` is an alias).

    Args:
        cert_file: the certificate (or chain) file, PEM.
        key_file: its private key file, PEM.
        pass_phrase: the key's pass phrase, if it is encrypted.
    """

    __match_args__ = ("cert_file", "key_file", "pass_phrase")

    cert_file: str
    key_file: str
    pass_phrase: str | None

    def __init__(self, cert_file: str, key_file: str, pass_phrase: str | None = None) -> None:
        set_field(self, "cert_file", cert_file)
        set_field(self, "key_file", key_file)
        set_field(self, "pass_phrase", pass_phrase)

    @property
    def certificate_file(self) -> str:
        """The certificate (or chain) file, as v2 names it."""
        return self.cert_file

    def __repr__(self) -> str:  # never show the pass phrase
        return f"X509(certificate_file={self.cert_file!r}, key_file={self.key_file!r})"
