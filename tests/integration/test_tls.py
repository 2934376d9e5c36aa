"""TLS: HTTPS on the HTTP port and gRPC over TLS (also mutual), with a certificate made here.

The clients are tritonclient's own, with their SSL options; a client that does not trust
the certificate, or (mutual TLS) presents none, is refused.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import ServerProcess, running_server

MODEL = "add_sub_fp32"


def _issue(
    tmp: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for 127.0.0.1, self-signed (a CA) when there is no issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (tmp / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tls")
    ca = _issue(tmp, "ca", None)
    _issue(tmp, "server", ca)
    _issue(tmp, "client", ca)
    _issue(tmp, "stranger", None)  # trusted by nobody
    return tmp


@pytest.fixture(scope="module")
def tls_server(test_repo: Path, certs: Path) -> Iterator[ServerProcess]:
    with running_server(
        test_repo,
        "--http-ssl-certfile", str(certs / "server.crt"),
        "--http-ssl-keyfile", str(certs / "server.key"),
        "--grpc-use-ssl-mutual", "true",
        "--grpc-server-cert", str(certs / "server.crt"),
        "--grpc-server-key", str(certs / "server.key"),
        "--grpc-root-cert", str(certs / "ca.crt"),
        tls_ca=certs / "ca.crt",
    ) as server:  # fmt: skip
        yield server


def _inputs(module: object) -> list[object]:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        t = module.InferInput(name, [1, 4], "FP32")  # type: ignore[attr-defined]
        t.set_data_from_numpy(x)
        tensors.append(t)
    return tensors


def test_https_with_tritonclient(tls_server: ServerProcess, certs: Path) -> None:
    client = httpclient.InferenceServerClient(
        tls_server.http_url, ssl=True, ssl_options={"ca_certs": str(certs / "ca.crt")}
    )
    try:
        assert client.is_server_ready()
        out = client.infer(MODEL, _inputs(httpclient)).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, 2 * np.arange(4, dtype=np.float32).reshape(1, 4))
    finally:
        client.close()


def test_https_refuses_a_client_that_does_not_trust_the_certificate(
    tls_server: ServerProcess, certs: Path
) -> None:
    client = httpclient.InferenceServerClient(
        tls_server.http_url, ssl=True, ssl_options={"ca_certs": str(certs / "stranger.crt")}
    )
    try:
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            client.is_server_ready()
    finally:
        client.close()


def test_mutual_tls_grpc_with_a_client_certificate(tls_server: ServerProcess, certs: Path) -> None:
    client = grpcclient.InferenceServerClient(
        tls_server.grpc_url,
        ssl=True,
        root_certificates=str(certs / "ca.crt"),
        private_key=str(certs / "client.key"),
        certificate_chain=str(certs / "client.crt"),
    )
    try:
        assert client.is_server_ready(client_timeout=30)
        out = client.infer(MODEL, _inputs(grpcclient), client_timeout=30).as_numpy("OUTPUT1")
        np.testing.assert_array_equal(out, np.zeros((1, 4), dtype=np.float32))
    finally:
        client.close()


@pytest.mark.parametrize("identity", ["none", "stranger"])
def test_mutual_tls_grpc_refuses_clients_without_a_trusted_certificate(
    tls_server: ServerProcess, certs: Path, identity: str
) -> None:
    extra = {}
    if identity == "stranger":
        extra = {
            "private_key": str(certs / "stranger.key"),
            "certificate_chain": str(certs / "stranger.crt"),
        }
    client = grpcclient.InferenceServerClient(
        tls_server.grpc_url, ssl=True, root_certificates=str(certs / "ca.crt"), **extra
    )
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_ready(client_timeout=10)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()
