"""Two gateways' identities and a driver that runs a handshake between them in memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gateway.crypto.suites import lookup_suite
from gateway.handshake import (
    Action,
    CommitEpoch,
    FetchQkdKeys,
    FetchQkdKeysById,
    HandshakeParams,
    InitiatorHandshake,
    InstallKey,
    QkdKey,
    ResponderHandshake,
    SendMessage,
)
from gateway.identity import LocalIdentity

NOW = 1_700_000_000.0


@pytest.fixture(scope="session")
def identities() -> tuple[LocalIdentity, LocalIdentity]:
    return LocalIdentity.generate(), LocalIdentity.generate()


def make_params(
    identities: tuple[LocalIdentity, LocalIdentity], **kw: Any
) -> tuple[HandshakeParams, HandshakeParams]:
    a, b = identities
    suite = lookup_suite(kw.pop("suite", "default"))
    ip = HandshakeParams("gw-a", "gw-b", a, b.public, suite, **kw)
    rp = HandshakeParams("gw-b", "gw-a", b, a.public, suite, **kw)
    return ip, rp


@dataclass
class Kme:
    """In-memory key store standing in for the pair of KMEs (pure tests only)."""

    size: int = 32
    keys: dict[str, bytes] = field(default_factory=dict)

    def enc(self, n: int) -> list[QkdKey]:
        out = [QkdKey(os.urandom(16).hex(), os.urandom(self.size)) for _ in range(n)]
        self.keys.update((k.key_id, k.key) for k in out)
        return out

    def dec(self, ids: tuple[str, ...]) -> list[QkdKey]:
        return [QkdKey(i, self.keys[i]) for i in ids]


@dataclass
class Run:
    """A recorded handshake: every wire message and the keys both sides installed."""

    init: bytes = b""
    resp: bytes = b""
    finish: bytes = b""
    done: bytes = b""
    installed_i: InstallKey | None = None
    installed_r: InstallKey | None = None
    commits: list[CommitEpoch] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


def drive(
    ip: HandshakeParams,
    rp: HandshakeParams,
    *,
    epoch: int = 1,
    last_epoch: int = 0,
    kme: Kme | None = None,
    now: float = NOW,
    tamper: Callable[[str, bytes], bytes] = lambda _kind, data: data,
    initiator_kme_up: bool = True,
    responder_kme_up: bool = True,
) -> tuple[Run, InitiatorHandshake, ResponderHandshake]:
    """Run one handshake to the end (or the first failure), recording every action."""
    kme = kme or Kme()
    run = Run()
    ini = InitiatorHandshake(ip, epoch, now)
    res = ResponderHandshake(rp, last_epoch, now)
    queue: list[tuple[str, list[Action]]] = [("i", ini.start(now))]
    for _ in range(20):  # bounded: a handshake has 4 messages
        if not queue:
            break
        side, actions = queue.pop(0)
        run.actions.extend(actions)
        for act in actions:
            if isinstance(act, CommitEpoch):
                run.commits.append(act)
            elif isinstance(act, FetchQkdKeys):
                if initiator_kme_up:
                    queue.append(("i", ini.on_qkd_keys(kme.enc(act.count), now)))
                else:
                    queue.append(("i", ini.on_qkd_unavailable("KME down", now)))
            elif isinstance(act, FetchQkdKeysById):
                if responder_kme_up:
                    queue.append(("r", res.on_qkd_keys(kme.dec(act.key_ids), now)))
                else:
                    queue.append(("r", res.on_qkd_unavailable("KME down", now)))
            elif isinstance(act, SendMessage):
                kind = act.type.name.lower()
                data = tamper(kind, act.data)
                setattr(run, kind, data)
                target = res if side == "i" else ini
                queue.append(("r" if side == "i" else "i", target.on_message(data, now)))
            elif isinstance(act, InstallKey):
                if side == "r":
                    run.installed_r = act
                    queue.append(("r", res.on_installed(now)))
                else:
                    run.installed_i = act
    return run, ini, res


@pytest.fixture
def params(
    identities: tuple[LocalIdentity, LocalIdentity],
) -> tuple[HandshakeParams, HandshakeParams]:
    return make_params(identities)


__all__ = ["NOW", "Kme", "Run", "drive", "make_params", "replace"]
