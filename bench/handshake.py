"""CPU cost of one whole handshake per suite vs the sum of its primitives.

Prints one JSON object: {"suites": {NAME: {"handshake_cpu_ms", "primitives_cpu_ms", "ratio",
"init_bytes", "resp_bytes", ...}}, "mldsa65": {"openssl": ..., "liboqs": ...}}: the
identity's ML-DSA-65 through either implementation. Both sides run in one process, no
network, no KME, a fixed 32-byte QKD key. The liboqs suites run fewer iterations (their
KEMs cost milliseconds).
Classic McEliece suites use static keys made once (as at provisioning); for them the
result also gives what an ephemeral key would cost per epoch (keygen, public key bytes
against the control frame cap), the figures behind the static-key decision.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.crypto import mldsa_oqs
from gateway.crypto.builtin import ED25519, ML_DSA_65
from gateway.crypto.combiner import combine
from gateway.crypto.mldsa_oqs import OqsMlDsa65Signer
from gateway.crypto.suites import (
    BUILTIN_SUITE_NAMES,
    SUITE_NAMES,
    ProviderMissingError,
    Suite,
    lookup_suite,
)
from gateway.handshake import (
    FetchQkdKeys,
    FetchQkdKeysById,
    HandshakeParams,
    InitiatorHandshake,
    InstallKey,
    QkdKey,
    ResponderHandshake,
    SendMessage,
)
from gateway.handshake.messages import MAX_MESSAGE_SIZE, MessageType
from gateway.identity import LocalIdentity

QKD = QkdKey("00000000-0000-0000-0000-000000000001", bytes(range(32)))


def handshake_once(ip: HandshakeParams, rp: HandshakeParams, epoch: int) -> dict[str, int]:
    now = time.time()
    ini = InitiatorHandshake(ip, epoch, now)
    res = ResponderHandshake(rp, epoch - 1, now)
    pending = [("i", ini.start(now))]
    installed = 0
    sizes: dict[str, int] = {}
    while pending:
        side, actions = pending.pop()
        for a in actions:
            if isinstance(a, FetchQkdKeys):
                pending.append(("i", ini.on_qkd_keys([QKD], now)))
            elif isinstance(a, FetchQkdKeysById):
                pending.append(("r", res.on_qkd_keys([QKD], now)))
            elif isinstance(a, SendMessage):
                sizes[a.type.name] = len(a.data)
                if side == "i":
                    pending.append(("r", res.on_message(a.data, now)))
                else:
                    pending.append(("i", ini.on_message(a.data, now)))
            elif isinstance(a, InstallKey):
                installed += 1
                if side == "r":
                    pending.append(("r", res.on_installed(now)))
    if installed != 2:
        raise RuntimeError("handshake did not complete")
    return sizes


def cpu_ms(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1000


def primitives_ms(suite: Suite, ident: LocalIdentity, n: int) -> float:
    pub = ident.public
    msg = os.urandom(4000)
    sig_ed, sig_ml = ident.sign(msg, b"ctx")
    total = 0.0
    for kem in suite.kems:
        pair = kem.generate()
        _, ct = kem.encapsulate(pair.public)
        if not suite.is_static(kem):  # a static key is made once, at provisioning
            total += cpu_ms(kem.generate, n)
        total += cpu_ms(lambda k=kem, p=pair: k.encapsulate(p.public), n)  # type: ignore[misc]
        total += cpu_ms(lambda k=kem, p=pair, c=ct: k.decapsulate(p, c), n)  # type: ignore[misc]
    # Two signatures of each kind (INIT, RESP), made as the identity makes them (ML-DSA
    # through liboqs where it is there), each verified once.
    total += 2 * cpu_ms(lambda: ident.sign(msg, b"ctx"), n)
    total += 2 * cpu_ms(lambda: ED25519.verify(pub.ed25519, sig_ed, msg, b"ctx"), n)
    total += 2 * cpu_ms(lambda: ML_DSA_65.verify(pub.mldsa65, sig_ml, msg, b"ctx"), n)
    secrets = [(k.name, bytes(32)) for k in suite.kems]
    total += 2 * cpu_ms(lambda: combine(  # both sides
        bytes(32), secrets, suite=suite.name, transcript_hash=bytes(48), ma=msg, mb=msg), n)
    return total


def mldsa65_ms(ident: LocalIdentity, n: int) -> dict[str, Any]:
    """ML-DSA-65 sign and verify through OpenSSL (`cryptography`) and through liboqs,
    the two implementations the identity can sign with (mldsa_oqs)."""
    msg = os.urandom(4000)
    pub = ident.public.mldsa65
    sig = ML_DSA_65.sign(ident.mldsa65_private, msg, b"ctx")
    openssl = {
        "sign_cpu_ms": round(cpu_ms(
            lambda: ML_DSA_65.sign(ident.mldsa65_private, msg, b"ctx"), n), 3),
        "verify_cpu_ms": round(cpu_ms(
            lambda: ML_DSA_65._loader(pub).verify(sig, msg, b"ctx"), n), 3),
    }
    signer = OqsMlDsa65Signer.from_seed(ML_DSA_65.private_bytes(ident.mldsa65_private), pub)
    if signer is None:
        return {"openssl": openssl, "liboqs": "not available (liboqs not installed)"}
    liboqs = {
        "sign_cpu_ms": round(cpu_ms(lambda: signer.sign(msg, b"ctx"), n), 3),
        "verify_cpu_ms": round(cpu_ms(lambda: mldsa_oqs.verify(pub, sig, msg, b"ctx"), n), 3),
    }
    signer.close()
    return {"openssl": openssl, "liboqs": liboqs, "identity_signs_with": "liboqs",
            "sign_speedup": round(openssl["sign_cpu_ms"] / liboqs["sign_cpu_ms"], 1),
            "verify_speedup": round(openssl["verify_cpu_ms"] / liboqs["verify_cpu_ms"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--json", action="store_true",
                      help="print the one JSON object on one line (it is always JSON)")
    ap.add_argument("--save", type=Path)
    args = ap.parse_args()
    a, b = LocalIdentity.generate(), LocalIdentity.generate()
    result: dict[str, Any] = {"suites": {}, "iterations": args.iterations,
                              "python": sys.version.split()[0],
                              "mldsa65": mldsa65_ms(a, args.iterations)}
    for name in SUITE_NAMES:
        try:
            suite = lookup_suite(name)
        except ProviderMissingError:
            result["suites"][name] = "not available (liboqs not installed)"
            continue
        n = args.iterations if name in BUILTIN_SUITE_NAMES else max(5, args.iterations // 10)
        extra: dict[str, Any] = {}
        statics: dict[str, Any] = {}
        peer_statics: dict[str, Any] = {}
        for kem in suite.kems:
            if suite.is_static(kem):
                keygen = cpu_ms(kem.generate, 3)
                statics[kem.name], peer_statics[kem.name] = kem.generate(), kem.generate()
                extra.update({
                    "static_kem": kem.name, "static_keygen_cpu_ms": round(keygen, 1),
                    "static_public_key_bytes": kem.public_key_size,
                    "ephemeral_init_would_be_bytes_at_least": kem.public_key_size,
                    "control_frame_cap_bytes": MAX_MESSAGE_SIZE,
                })
        ip = HandshakeParams("gw-a", "gw-b", a, b.public, suite,
                             static_kem_keys=statics,
                             peer_static_kem_keys={k: p.public for k, p in peer_statics.items()})
        rp = HandshakeParams("gw-b", "gw-a", b, a.public, suite,
                             static_kem_keys=peer_statics,
                             peer_static_kem_keys={k: p.public for k, p in statics.items()})
        counter = iter(range(1, 10**9))
        sizes: dict[str, int] = {}
        for _ in range(max(3, n // 10)):  # warm-up: caches, allocator, clocks
            sizes = handshake_once(ip, rp, next(counter))
        hs = cpu_ms(
            lambda ip=ip, rp=rp, c=counter: handshake_once(ip, rp, next(c)),  # type: ignore[misc]
            n,
        )
        prim = primitives_ms(suite, a, n)
        result["suites"][name] = {"handshake_cpu_ms": round(hs, 3),
                                  "primitives_cpu_ms": round(prim, 3),
                                  "ratio": round(hs / prim, 3), "iterations": n,
                                  "init_bytes": sizes[MessageType.INIT.name],
                                  "resp_bytes": sizes[MessageType.RESP.name], **extra}
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
