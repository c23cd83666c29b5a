"""The private charon runner: start, stop, restart, failure to start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.tunnels.charon_process import (
    DEFAULT_PLUGINS,
    CharonError,
    CharonInstance,
    charon_missing_reason,
    render_strongswan_conf,
)

pytestmark = pytest.mark.netns


def test_conf_caps_log_level_so_keys_are_never_dumped(tmp_path: Path) -> None:
    conf = render_strongswan_conf(tmp_path / "v", tmp_path / "l", log_level=4)
    assert "default = 2" in conf
    assert "kernel-libipsec" in conf and "make_before_break = yes" in conf
    assert f"unix://{tmp_path / 'v'}" in conf


def test_missing_root_is_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = charon_missing_reason()
    assert reason is not None and "root" in reason


def test_start_stop_restart_in_a_namespace(lab: Any, tmp_path: Path) -> None:
    charon = CharonInstance(tmp_path / "c", lab.ns_name("a"))
    try:
        charon.start()
        first = charon.pid
        assert charon.running and charon.vici_socket.exists()
        assert os.stat(charon.workdir).st_mode & 0o077 == 0
        # It runs inside the namespace: its TUN device is there, not here.
        assert "ipsec0" in lab.interfaces("a")
        charon.restart()
        assert charon.running and charon.pid != first
    finally:
        charon.stop()
    assert not charon.running and not charon.vici_socket.exists()
    assert first is not None
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


def test_charon_that_cannot_start_is_a_clear_error(lab: Any, tmp_path: Path) -> None:
    # A trailing "!" makes a plugin critical: charon refuses to run without it.
    charon = CharonInstance(
        tmp_path / "c", lab.ns_name("a"), plugins=(*DEFAULT_PLUGINS, "no-such-plugin!")
    )
    try:
        with pytest.raises(CharonError, match="exited with status"):
            charon.start(timeout=10)
        assert not charon.running
    finally:
        charon.stop()
