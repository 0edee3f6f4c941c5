"""Shared fixtures (a throwaway trustme CA and a certificate for 127.0.0.1/localhost), and
the report header that says which path of the hot path this pass runs on."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from backchannel.protocol import speedups


def pytest_report_header() -> str:
    path = "compiled accelerator" if speedups.ACTIVE else "pure Python"
    return f"backchannel hot path: {path} (BACKCHANNEL_NO_EXTENSIONS selects pure Python)"


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_cert(tls_ca: trustme.CA) -> trustme.LeafCert:
    return tls_ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_ssl(tls_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_cert.configure_cert(context)
    return context


@pytest.fixture
def client_ssl(tls_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    tls_ca.configure_trust(context)
    return context


@pytest.fixture(scope="session")
def tls_files(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: trustme.CA, tls_cert: trustme.LeafCert
) -> dict[str, Path]:
    """PEM files for processes that take paths (node): ca, cert (chain), key."""
    folder = tmp_path_factory.mktemp("tls")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    tls_ca.cert_pem.write_to_path(files["ca"])
    for i, pem in enumerate(tls_cert.cert_chain_pems):
        pem.write_to_path(files["cert"], append=i > 0)
    tls_cert.private_key_pem.write_to_path(files["key"])
    return files
