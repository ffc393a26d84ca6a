"""TLS settings for servers and channels: PEM files, read when credentials are built."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Tls:
    """Certificates for one side of a connection.

    Args:
        cert_file: this side's certificate chain (PEM); a server needs one.
        key_file: its private key (PEM).
        ca_file: the CA this side trusts. A client verifies the server against it; a
            server that has one requires client certificates signed by it (mutual TLS).
    """

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None

    def server_credentials(self) -> grpc.ServerCredentials:
        if not (self.cert_file and self.key_file):
            raise ValueError("a TLS server needs cert_file and key_file")
        ca = _read(self.ca_file)
        return grpc.ssl_server_credentials([(_read(self.key_file), _read(self.cert_file))],
                                           root_certificates=ca, require_client_auth=ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca_file),
                                            private_key=_read(self.key_file),
                                            certificate_chain=_read(self.cert_file))


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()
