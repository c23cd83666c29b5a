"""The KME simulator's TLS: the server context per KME (client certificates required) and the
calling SAE, read from the subject CN of its certificate."""

from __future__ import annotations

import ssl

from kms_client.sim.pki import Pki


def server_ssl(pki: Pki, kme_id: str) -> ssl.SSLContext:
    """TLS 1.2+ server context for one KME; a client without a certificate of our CA is refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    pair = pki.kmes[kme_id]
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    ctx.num_tickets = 1  # a client resumes from its latest ticket; a second is never used
    return ctx


def common_name(peercert: object) -> str | None:
    """The subject CN of a verified peer certificate (the calling SAE's ID), or None."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None
