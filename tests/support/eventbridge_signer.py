"""Sign deliveries the way EventBridge does, for tests; shares no code with ``webhook/``.

Written from `docs/eventbridge-signature.md` alone: the string-to-sign is spelled out here
line by line, v2 signs it with RSA PKCS#1 v1.5 / SHA-256, and v1 pads a one-time secret with
PKCS#1 v1.5 type 1 and applies the raw RSA private operation (textbook ``m^d mod n``), then
HMAC-SHA1s the string with it. :class:`CertificateHost` serves the signing certificate over
HTTPS from a thread and records every request path, so tests can assert "never fetched";
:class:`ConnectProxy` tunnels HTTPS for real EventBridge host names to it, so the production
region rule is tested with a real fetch and no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import select
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Identity:
    """An RSA key pair and a self-signed X.509 certificate (PEM) for it."""

    private_key: rsa.RSAPrivateKey
    certificate_pem: bytes

    @property
    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def make_identity(
    common_name: str = "eventbridge-test",
    *,
    tls_ip: str | None = None,
    dns_names: tuple[str, ...] = (),
) -> Identity:
    """A fresh 2048-bit key and a self-signed certificate; ``tls_ip`` adds an IP SAN and
    ``dns_names`` DNS SANs (a CA certificate, for a TLS server)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=tls_ip is not None, path_length=None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if tls_ip is not None:
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(tls_ip))]
        names += [x509.DNSName(name) for name in dns_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    certificate = builder.sign(key, hashes.SHA256())
    return Identity(key, certificate.public_bytes(serialization.Encoding.PEM))


@dataclass
class Signer:
    """Builds signed header sets for ``target_url`` with ``identity``'s key and ``cert_url``."""

    identity: Identity
    cert_url: str
    target_url: str

    def headers(
        self,
        body: bytes,
        *,
        version: str = "v2",
        timestamp_ms: int | None = None,
        token: str | None = None,
        token_line: bool = True,
        trailing_newline: bool = True,
    ) -> dict[str, str]:
        """Headers EventBridge would send with ``body`` (names capitalised)."""
        ts = str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
        method_name, method_value = (
            ("x-eventbridge-hash-method", "SHA256")
            if version == "v2"
            else ("x-eventbridge-signature-method", "HMAC-SHA1")
        )
        text = (
            f"{self.target_url}\n"
            f"x-eventbridge-signature-timestamp: {ts}\n"
            f"{method_name}: {method_value}\n"
            f"x-eventbridge-signature-version: 1.0\n"
            f"x-eventbridge-signature-url: {self.cert_url}\n"
        )
        if token is not None and token_line:
            text += f"x-eventbridge-signature-token: {token}\n"
        to_sign = text.encode() + body + (b"\n" if trailing_newline else b"")
        out = {
            "X-Eventbridge-Signature-Timestamp": ts,
            "X-Eventbridge-Signature-Version": "1.0",
            "X-Eventbridge-Signature-Url": self.cert_url,
            "-".join(part.capitalize() for part in method_name.split("-")): method_value,
        }
        if token is not None:
            out["X-Eventbridge-Signature-Token"] = token
        if version == "v2":
            signature = self.identity.private_key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
            out["X-Eventbridge-Signature-V2"] = base64.b64encode(signature).decode()
        else:
            secret = os.urandom(16).hex().encode()
            digest = hmac.new(secret, to_sign, hashlib.sha1).digest()
            out["X-Eventbridge-Signature-Secret"] = base64.b64encode(
                self._pad_and_raise(secret)
            ).decode()
            out["X-Eventbridge-Signature"] = base64.b64encode(digest).decode()
        return out

    def _pad_and_raise(self, secret: bytes) -> bytes:
        """RSA private operation over PKCS#1 v1.5 type-1 padded ``secret`` (RFC 8017, 9.2)."""
        numbers = self.identity.private_key.private_numbers()
        size = (numbers.public_numbers.n.bit_length() + 7) // 8
        padded = b"\x00\x01" + b"\xff" * (size - 3 - len(secret)) + b"\x00" + secret
        value = pow(int.from_bytes(padded, "big"), numbers.d, numbers.public_numbers.n)
        return value.to_bytes(size, "big")


@dataclass
class Route:
    """What the certificate host answers for one path."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class CertificateHost:
    """An HTTPS server thread on 127.0.0.1 answering registered paths; records request paths.

    ``ca_file`` is the PEM to trust (set ``SSL_CERT_FILE`` to it for the webhook's client);
    its TLS certificate also names ``dns_names`` (reached through a :class:`ConnectProxy`).
    """

    def __init__(self, directory: Path, dns_names: tuple[str, ...] = ()) -> None:
        tls = make_identity("127.0.0.1", tls_ip="127.0.0.1", dns_names=dns_names)
        self.ca_file = directory / "tls-ca.pem"
        key_file = directory / "tls-key.pem"
        self.ca_file.write_bytes(tls.certificate_pem)
        key_file.write_bytes(tls.private_key_pem)
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        """``https://127.0.0.1:<port><path>``."""
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self) -> CertificateHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.requests.append(self.path)
                route = host.routes.get(self.path, Route(b"not found", 404))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


class ConnectProxy:
    """An HTTP ``CONNECT`` proxy on 127.0.0.1 that tunnels every request to ``upstream_port``.

    Set ``HTTPS_PROXY`` to :attr:`url` and a client asking for ``https://any.host/`` reaches the
    local HTTPS server, which must present a certificate for that name. ``targets`` records each
    ``CONNECT`` target (``host:port``), so tests can assert "never fetched".
    """

    def __init__(self, upstream_port: int) -> None:
        self.targets: list[str] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                proxy.targets.append(head.split(b" ")[1].decode())
                with socket.create_connection(("127.0.0.1", upstream_port)) as upstream:
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    _pipe(client, upstream)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, for ``HTTPS_PROXY``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ConnectProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between ``a`` and ``b`` until either side closes."""
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 10)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)
