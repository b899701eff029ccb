"""TLS as a sans-IO layer (``ssl.SSLObject`` over two ``MemoryBIO``), and the
client context that every iotdev connection uses.

Context rules (azure-iot-device compatible, stricter where it matters): TLS 1.2
minimum, certificate and host name verification always on, trust anchors from
``server_verification_cert`` (a PEM string) when given, else the operating
system's store (``load_default_certs()``, what azure-iot-device v2 uses) plus
certifi's bundle when certifi is installed (so a container or board without a
CA bundle still reaches IoT Hub, and a private root the OS trusts still works);
an optional cipher list (an OpenSSL string, or a list of names joined with
``:`` after upper-casing and ``_`` -> ``-`` as v2 does); an optional client
certificate (``X509``).
"""

from __future__ import annotations

import ssl

from .._errors import ConnectionDroppedError, TLSError, TLSVerificationError
from ._credentials import X509
from ._layer import Layer

__all__ = ["X509", "TLSLayer", "make_client_context", "shared_client_context"]


def _cipher_string(cipher: str | list[str] | tuple[str, ...]) -> str:
    if isinstance(cipher, str):
        return cipher
    if isinstance(cipher, list | tuple) and all(isinstance(c, str) for c in cipher):
        return ":".join(c.upper().replace("_", "-") for c in cipher)
    raise TypeError("Invalid type for 'cipher': expected str or a list of str, "
                    f"got {type(cipher).__name__}")


def make_client_context(
    *,
    server_verification_cert: str | None = None,
    cipher: str | list[str] | None = None,
    x509: X509 | None = None,
) -> ssl.SSLContext:
    """The TLS client context.

    Args:
        server_verification_cert: PEM text of the trust anchor(s) to use instead
            of the OS store and certifi's bundle (e.g. a test CA, or an IoT Edge
            gateway's root).
        cipher: OpenSSL cipher list string, or a list of cipher names.
        x509: client certificate for X.509 authentication.

    Raises:
        TypeError: ``cipher`` or ``server_verification_cert`` of the wrong type.
        ValueError: the PEM or the cipher list is not usable (the reason is given).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if server_verification_cert is not None:
        if not isinstance(server_verification_cert, str):
            raise TypeError("server_verification_cert must be PEM text (str), not "
                            f"{type(server_verification_cert).__name__}")
        try:
            ctx.load_verify_locations(cadata=server_verification_cert)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"server_verification_cert is not usable PEM: {exc}") from exc
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)  # the OS store, as v2 does
        try:
            import certifi  # imported here: only clients that use the default trust need it
        except ModuleNotFoundError:  # installed with --no-deps: the OS store alone
            pass
        else:
            ctx.load_verify_locations(cafile=certifi.where())
    if cipher is not None:
        try:
            ctx.set_ciphers(_cipher_string(cipher))
        except ssl.SSLError as exc:
            raise ValueError(f"no usable cipher in {cipher!r}: {exc}") from exc
    if x509 is not None:
        try:
            ctx.load_cert_chain(x509.cert_file, x509.key_file, x509.pass_phrase)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the X.509 certificate {x509.cert_file!r} / "
                             f"{x509.key_file!r}: {exc}") from exc
    return ctx


_SHARED: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_SHARED_MAX = 16


def shared_client_context(*, server_verification_cert: str | None = None,
                          cipher: str | list[str] | None = None) -> ssl.SSLContext:
    """``make_client_context()`` without a client certificate, made once per
    (trust anchors, ciphers) and shared: thousands of clients in one process
    then hold one context (about 17 KB and a parsed CA bundle each otherwise).
    A context with a client certificate is never shared (the files may be
    replaced between connections)."""
    key = (server_verification_cert, None if cipher is None else _cipher_string(cipher))
    ctx = _SHARED.get(key)
    if ctx is None:
        ctx = make_client_context(server_verification_cert=server_verification_cert,
                                  cipher=cipher)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = ctx
    return ctx


class TLSLayer(Layer):
    """TLS client (or server, with ``server_side=True``) over memory buffers."""

    def __init__(
        self, context: ssl.SSLContext, server_hostname: str | None, *, server_side: bool = False,
        max_record: int | None = None,
    ) -> None:
        # max_record: write at most this many plaintext bytes per TLS record.
        # Used under WebSocket: libwebsockets (mosquitto's WebSocket listener)
        # reads in small slices and can leave the tail of a 16 KB record inside
        # OpenSSL where its poll loop does not see it, stalling ~100 ms per burst.
        self._max_record = max_record
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self._host = server_hostname
        self.established = False
        self.closed = False

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._ssl

    def start(self) -> None:
        self._handshake()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            raise TLSVerificationError(
                f"TLS: the certificate of {self._host} did not verify: {reason}", reason
            ) from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake with {self._host} failed: {exc.reason or exc}") \
                from exc
        self.established = True

    def receive_data(self, data: bytes) -> bytes:
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        if not self.established:
            try:
                self._handshake()
            except ssl.SSLEOFError as exc:  # pragma: no cover - mapped in _handshake
                raise ConnectionDroppedError("TLS: the server closed during the handshake") \
                    from exc
            if not self.established:
                if not data:
                    self.closed = True
                    raise ConnectionDroppedError(
                        f"TLS: {self._host} closed the connection during the handshake")
                return b""
        chunks: list[bytes] = []
        incoming = self._incoming
        while True:
            if chunks and not incoming.pending and not self._ssl.pending():
                break  # all received bytes are decrypted: skip the SSLWantReadError
            try:
                chunk = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.closed = True
                break
            except ssl.SSLError as exc:
                raise ConnectionDroppedError(f"TLS error from {self._host}: {exc}") from exc
            if not chunk:
                self.closed = True
                break
            chunks.append(chunk)
        if not data:
            self.closed = True
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        try:
            step = self._max_record
            if step is None or len(data) <= step:
                self._ssl.write(data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), step):
                    self._ssl.write(view[start:start + step])
        except ssl.SSLError as exc:
            raise ConnectionDroppedError(f"TLS error sending to {self._host}: {exc}") from exc

    def data_to_send(self) -> bytes:
        return self._outgoing.read()

    def close(self) -> None:
        if self.established and not self.closed:
            try:
                self._ssl.unwrap()
            except ssl.SSLError:
                pass
