"""A renewed serving certificate is picked up by the real ``discofilter serve`` without a restart.

The certificate files are swapped the way kubelet updates a Secret volume: the files are symlinks
into ``..data``, itself a symlink to a timestamped directory, replaced in one rename.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path

import trustme

from tests.harness import write_kubeconfig
from tests.test_logs import Serve, simapi


class SecretVolume:
    """A directory laid out as kubelet's AtomicWriter lays out a mounted Secret."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(Path("..data") / name)

    def write(self, cert: bytes, key: bytes) -> None:
        self.version += 1
        data = self.root / f"..v{self.version}"
        data.mkdir()
        (data / "tls.crt").write_bytes(cert)
        (data / "tls.key").write_bytes(key)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, self.root / "..data")


def issue(ca: trustme.CA) -> tuple[bytes, bytes, bytes]:
    """(certificate chain PEM, key PEM, the leaf's DER) of a new certificate for 127.0.0.1."""
    leaf = ca.issue_cert("127.0.0.1")
    cert = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return cert, leaf.private_key_pem.bytes(), der


async def served_cert(host: str, port: int, ca: trustme.CA) -> bytes:
    """The DER certificate a new TLS connection is served (verified against ``ca``)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    _, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    assert isinstance(der, bytes)
    return der


async def test_a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_refused(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    vol = SecretVolume(tmp_path / "tls")
    cert1, key1, der1 = issue(ca)
    vol.write(cert1, key1)
    async with simapi() as (_, url):
        kc = write_kubeconfig(tmp_path / "kubeconfig", url)
        flags = ["--log-format=json", "--tls-reload-seconds=0.1"]
        flags += ["--tls-cert-file", str(vol.root / "tls.crt"), "--tls-key-file", str(vol.root / "tls.key")]
        async with Serve(kc, *flags) as df:
            start = json.loads(await df.until("discofilter listening"))
            host, port = start["listen"].rsplit(":", 1)
            assert await served_cert(host, int(port), ca) == der1

            cert2, key2, der2 = issue(ca)
            vol.write(cert2, key2)
            await df.until("serving certificate reloaded")
            assert await served_cert(host, int(port), ca) == der2

            _, key3, _ = issue(ca)
            vol.write(cert1, key3)  # a key that does not match its certificate
            refused = json.loads(await df.until("cannot load the serving certificate"))
            assert refused["level"] == "ERROR"
            await asyncio.sleep(0.5)  # several more checks: the broken version is not retried each time
            assert await served_cert(host, int(port), ca) == der2
    assert sum("cannot load the serving certificate" in line for line in df.lines) == 1  # once, not per check
    assert df.proc is not None and df.proc.returncode == 0
