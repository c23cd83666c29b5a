"""The appliance's default file locations, importable without the config models."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/qsgw/gateway.yaml")
