"""KME simulator: a real ETSI GS QKD 014 server over mutual TLS, from a topology file."""
