"""Check a Kafka connection's TLS settings before any client starts: one clear error, not a retry loop.

A kafka-python client whose TLS settings are wrong (a CA that did not sign the broker's certificate,
a client key it cannot decrypt, TLS against a plaintext listener or the reverse) does not fail: it
logs the handshake error and retries its bootstrap with growing backoff until a timeout, and then
reports only that it could not bootstrap. :func:`check_kafka_tls` makes the same connection once
with the same files — TCP, the TLS handshake, one ``ApiVersions`` request (which every Kafka broker
answers before authentication) — and turns what went wrong into one line naming the field to fix.

A broker that does not accept the TCP connection at all is not a TLS problem: the check says nothing
and the clients' own retry and pause handle it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct

from avminer.config import KafkaSettings
from avminer.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

_TLS_PROTOCOLS = {"SSL", "SASL_SSL"}
_API_VERSIONS = 18  # Kafka protocol api key; version 0 is answered by every broker, before SASL too.
_CORRELATION_ID = 0x61766D6E  # "avmn": recognisable in a packet capture


def tls_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context a kafka-python client builds from ``kafka.ssl_*`` (and ``kafka.extra``).

    Read from :meth:`KafkaSettings.client_kwargs`, so a setting given through ``kafka.extra``
    (``ssl_check_hostname: false``, a different ``ssl_cafile``) counts as it does for the clients.

    Raises:
        ConfigError: a CA bundle, certificate or key cannot be read, or the key's password is wrong.
    """
    kw = settings.client_kwargs()
    if isinstance(kw.get("ssl_context"), ssl.SSLContext):
        return kw["ssl_context"]  # type: ignore[no-any-return]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = bool(kw.get("ssl_check_hostname", True))
    cafile, certfile, keyfile = kw.get("ssl_cafile"), kw.get("ssl_certfile"), kw.get("ssl_keyfile")
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read the CA bundle {cafile}: {_reason(exc)}", "kafka.ssl_cafile") from exc
    if certfile:
        try:
            ctx.load_cert_chain(certfile, keyfile or None, kw.get("ssl_password"))
        except (OSError, ssl.SSLError) as exc:
            why = (_reason(exc) if not isinstance(exc, ssl.SSLError)
                   else "the key cannot be decrypted (wrong kafka.ssl_password?) or does not match the certificate")
            raise ConfigError(
                f"cannot load the client certificate {certfile} with key {keyfile or '(in the certificate file)'}: "
                f"{why}; check kafka.ssl_certfile, kafka.ssl_keyfile and kafka.ssl_password", "kafka.ssl_keyfile",
            ) from exc
    elif keyfile:
        raise ConfigError("is set but kafka.ssl_certfile is not; mutual TLS needs both", "kafka.ssl_keyfile")
    return ctx


def check_kafka_tls(settings: KafkaSettings, timeout_s: float = 10.0) -> None:
    """With ``kafka.security_protocol`` SSL or SASL_SSL, prove TLS works with every bootstrap server.

    Does nothing for the plaintext protocols, and nothing for a server that refuses the TCP
    connection or cannot be reached (not a TLS problem; the clients retry).

    Raises:
        ConfigError: the TLS files cannot be used (see :func:`tls_context`).
        SourceError: a reachable server's TLS handshake or first request failed; the message names the
            server, what failed and the setting to check.
    """
    kw = settings.client_kwargs()
    if str(kw.get("security_protocol", "")).upper() not in _TLS_PROTOCOLS:
        return
    ctx = tls_context(settings)
    servers = kw["bootstrap_servers"]
    for server in servers.split(",") if isinstance(servers, str) else servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{server!r} is not host:port", "kafka.bootstrap_servers")
        _probe(ctx, host.strip("[]"), int(port), settings.client_id, timeout_s)


def _probe(ctx: ssl.SSLContext, host: str, port: int, client_id: str, timeout_s: float) -> None:
    server = f"{host}:{port}"
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        log.debug("TLS check of %s skipped: %s (the clients retry)", server, exc)
        return
    with contextlib.closing(raw):
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise SourceError(
                f"TLS handshake with the Kafka broker {server} failed: its certificate was not accepted "
                f"({exc.verify_message}); check kafka.ssl_cafile (the CA that signed the broker's certificate) "
                "and that the certificate names this host"
            ) from exc
        except ssl.SSLError as exc:
            raise SourceError(
                f"TLS handshake with the Kafka broker {server} failed ({_reason(exc)}); is it a TLS listener? "
                "check kafka.security_protocol and kafka.bootstrap_servers"
            ) from exc
        except TimeoutError as exc:
            raise SourceError(
                f"no TLS handshake from the Kafka broker {server} within {timeout_s:.0f}s; is it a TLS listener? "
                "check kafka.security_protocol and kafka.bootstrap_servers"
            ) from exc
        except OSError as exc:
            raise SourceError(f"TLS handshake with the Kafka broker {server} failed: {exc}") from exc
        with contextlib.closing(tls):
            _first_request(tls, server, client_id, timeout_s)


def _first_request(tls: ssl.SSLSocket, server: str, client_id: str, timeout_s: float) -> None:
    """Send ApiVersions v0 and read the answer's header.

    With TLS 1.3 the server checks the client's certificate after the client's side of the handshake
    is done, so a refused client certificate shows only here, as an alert instead of an answer.
    """
    name = client_id.encode()[:200]
    body = struct.pack(">hhih", _API_VERSIONS, 0, _CORRELATION_ID, len(name)) + name
    try:
        tls.sendall(struct.pack(">i", len(body)) + body)
        header = _read_exactly(tls, 8)
    except ssl.SSLError as exc:
        raise SourceError(
            f"the Kafka broker {server} refused this client over TLS ({_reason(exc)}); check kafka.ssl_certfile "
            "and kafka.ssl_keyfile (a client certificate the broker's CA signed)"
        ) from exc
    except TimeoutError as exc:
        raise SourceError(f"the Kafka broker {server} did not answer over TLS within {timeout_s:.0f}s") from exc
    except (OSError, EOFError) as exc:
        raise SourceError(
            f"the Kafka broker {server} closed the TLS connection without answering ({exc}); check "
            "kafka.ssl_certfile and kafka.ssl_keyfile (a client certificate the broker's CA signed)"
        ) from exc
    size, correlation = struct.unpack(">ii", header)
    if correlation != _CORRELATION_ID or size < 4:
        raise SourceError(f"{server} answered over TLS but not as a Kafka broker; check kafka.bootstrap_servers")


def _read_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("end of stream")
        data += chunk
    return data


def _reason(exc: BaseException) -> str:
    """An OpenSSL error's short reason (``CERTIFICATE_VERIFY_FAILED``), else the exception text."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc)
