"""Throwaway X.509 certificates for TLS tests, made with the openssl CLI at test time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(directory: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make test certificates")
    subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (`{name}.pem`, `{name}.key`)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(directory, "req", "-x509", *EC_KEY, "-keyout", f"{name}.key", "-out",
             f"{name}.pem", "-days", "1", "-subj", f"/CN=dermtwin test {name}")
    return directory / f"{name}.pem", directory / f"{name}.key"


def issue(directory: Path, ca: tuple[Path, Path], name: str, common_name: str,
          ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for `common_name` (and IP `ip`) signed by `ca`: (`{name}.pem`,
    `{name}.key`)."""
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\n")
    _openssl(directory, "req", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={common_name}")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey",
             str(ca[1]), "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile",
             ext.name)
    return directory / f"{name}.pem", directory / f"{name}.key"
