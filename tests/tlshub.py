"""The local hub over TLS, with a certificate authority made at test time, and one port that speaks both.

:func:`make_ca` writes a CA and a server certificate for 127.0.0.1 / localhost (a client trusts them with
``SSL_CERT_FILE``). :func:`dual_port` puts https and plain http on the same host and port, the way a
misconfigured or hostile hub can redirect ``https://hub:PORT`` to ``http://hub:PORT``: a client that compares
only hosts (or host and port) takes them for one place and sends its token over plain http.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .hub import HubServer

#: The first byte of a TLS handshake record.
_HANDSHAKE = 0x16


def make_ca(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A fresh CA (its certificate file, for ``SSL_CERT_FILE``) and a server context whose certificate it
    signed, valid for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "artifact-import test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def dual_port(server: HubServer, context: ssl.SSLContext) -> tuple[str, str]:
    """Serve the hub over TLS too, and put both on one new port of 127.0.0.1; its https and http URLs."""
    return asyncio.run_coroutine_threadsafe(_dual_port(server, context), server._loop).result(timeout=30)


async def _dual_port(server: HubServer, context: ssl.SSLContext) -> tuple[str, str]:
    tls_url = await server._site("127.0.0.1", 0, ssl_context=context)
    tls_port = int(tls_url.rsplit(":", 1)[1])
    plain_port = int(server.url.rsplit(":", 1)[1])

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1)
        if not first:
            writer.close()
            return
        port = tls_port if first[0] == _HANDSHAKE else plain_port
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(first)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    front = await asyncio.start_server(forward, "127.0.0.1", 0)
    server._fronts.append(front)
    port = front.sockets[0].getsockname()[1]
    return f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
