"""Client endpoints for the servers streamd connects to (Redis, RabbitMQ): TCP or TLS."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS


def client_endpoint(reactor, host: str, port: int, timeout: float, tls: bool = False,
                    tls_ca: str = "") -> IStreamClientEndpoint:
    """
    A TCP endpoint to C{host:port}; with C{tls}, TLS on top, checking the server's
    certificate against C{tls_ca} (a PEM file) or the system's CAs.
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if tls:
        trust = None
        if tls_ca:
            with open(tls_ca, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust), endpoint)
    return endpoint
