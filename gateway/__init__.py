"""qsgw: a quantum-safe VPN gateway daemon (QKD + PQC + X25519 keys for WireGuard and IKEv2)."""

__version__ = "0.1.0"
