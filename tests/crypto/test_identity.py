"""Gateway identities: the pasteable public string and `qsgw keygen`."""

from __future__ import annotations

import argparse
import stat
import string
from pathlib import Path

import pytest

from gateway import identity_cli
from gateway.identity import IdentityError, LocalIdentity, PublicIdentity


def _keygen(out: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    identity_cli.add_arguments(parser)
    return identity_cli.run(parser.parse_args(["--out", str(out), *extra]))


def test_public_text_round_trip() -> None:
    pub = LocalIdentity.generate().public
    text = pub.to_text()
    assert text.startswith("qsgw-id-v2:") and "\n" not in text
    assert text.endswith("." + pub.check()) and len(pub.check()) == 8
    assert PublicIdentity.from_text("  " + text + "\n") == pub
    assert len(pub.fingerprint()) == 39 and pub.fingerprint() in repr(pub)


@pytest.mark.parametrize("bad", [
    "", "qsgw-id-v2:AAAA.AAAA", "qsgw-id-v1:AAAA", "qsgw-id-v1:@@@.AAAA",
    "qsgw-id-v1:AAAA.AAAA", "qsgw-id-v1:a.b.c", "qsgw-id-v2:AAAA.AAAA.00000000",
    "qsgw-id-v3:AAAA.AAAA.00000000",
])
def test_bad_public_text_is_refused(bad: str) -> None:
    with pytest.raises(IdentityError):
        PublicIdentity.from_text(bad)


def test_v1_is_refused_unless_allowed_and_v2_catches_every_change() -> None:
    pub = LocalIdentity.generate().public
    ed, ml, check = pub.to_text().removeprefix("qsgw-id-v2:").split(".")
    v1 = f"qsgw-id-v1:{ed}.{ml}"
    with pytest.raises(IdentityError, match="no checksum"):
        PublicIdentity.from_text(v1)
    assert PublicIdentity.from_text(v1, allow_v1=True) == pub
    other = "0" if check[0] != "0" else "1"
    b64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    spare = b64[b64.index(ed[-2]) ^ 1]  # the same 32 bytes: only a spare bit differs
    def swap(c: str) -> str:
        return "x" if c != "x" else "y"
    for bad in (f"{ed[:3]}{swap(ed[3])}{ed[4:]}.{ml}.{check}",
                f"{ed}.{ml[:-9]}{swap(ml[-9])}{ml[-8:]}.{check}",
                f"{ed}.{ml}.{other}{check[1:]}", f"{ed[:-2]}{spare}=.{ml}.{check}"):
        assert bad != f"{ed}.{ml}.{check}"
        with pytest.raises(IdentityError, match="checksum mismatch"):
            PublicIdentity.from_text(f"qsgw-id-v2:{bad}")


def test_keygen_show_prints_the_same_identity_in_v2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "id"
    assert _keygen(out) == 0
    made = capsys.readouterr().out
    (out / "identity.pub").write_text("qsgw-id-v1:old\n")  # as an old keygen left it
    assert _keygen(out, "--show") == 0
    assert capsys.readouterr().out == made
    assert (out / "identity.pub").read_text().strip() == made.splitlines()[-1]


def test_keygen_writes_0600_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "id"
    assert _keygen(out) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    for name in ("ed25519.key", "mldsa65.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    loaded = LocalIdentity.load(out)
    assert loaded.public.to_text() == printed
    assert repr(loaded) == "LocalIdentity()"
    before = (out / "ed25519.key").read_bytes()
    assert _keygen(out) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "ed25519.key").read_bytes() == before
    assert _keygen(out, "--force") == 0
    assert (out / "ed25519.key").read_bytes() != before


def test_load_refuses_group_readable_keys(tmp_path: Path) -> None:
    LocalIdentity.generate().save(tmp_path)
    (tmp_path / "mldsa65.key").chmod(0o640)
    with pytest.raises(IdentityError, match="chmod 600"):
        LocalIdentity.load(tmp_path)


def test_signatures_verify_only_with_both_keys() -> None:
    from gateway.crypto.builtin import ED25519, ML_DSA_65

    ident = LocalIdentity.generate()
    sig_ed, sig_ml = ident.sign(b"msg", b"ctx")
    pub = ident.public
    assert ED25519.verify(pub.ed25519, sig_ed, b"msg", b"ctx")
    assert ML_DSA_65.verify(pub.mldsa65, sig_ml, b"msg", b"ctx")
    assert not ML_DSA_65.verify(pub.mldsa65, sig_ml, b"msg", b"other")
    assert not ED25519.verify(pub.ed25519, sig_ed, b"msg", b"other")


def test_keygen_static_kem_writes_the_pair_and_prints_its_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from tests.liboqs_gate import require_liboqs

    require_liboqs()
    out = tmp_path / "id"
    assert _keygen(out) == 0
    before = (out / "ed25519.key").read_bytes()
    capsys.readouterr()
    assert _keygen(out, "--static-kem", "mceliece460896f") == 0
    printed = capsys.readouterr().out
    assert (out / "ed25519.key").read_bytes() == before  # the identity is kept
    secret, public = out / "classic-mceliece-460896f.key", out / "classic-mceliece-460896f.pub"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(public.read_bytes()) == 524_160
    digest = hashlib.sha256(public.read_bytes()).hexdigest()
    assert f"static_kem: {{public_file: {public.name}, sha256: {digest}}}" in printed
    # A second run refuses to replace the key (the peer pinned it) unless --force.
    assert _keygen(out, "--static-kem", "Classic-McEliece-460896f") == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert hashlib.sha256(public.read_bytes()).hexdigest() == digest
    assert _keygen(out, "--static-kem", "Classic-McEliece-460896f", "--force") == 0
    assert hashlib.sha256(public.read_bytes()).hexdigest() != digest


def test_keygen_static_kem_refuses_a_non_static_kem_before_making_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.liboqs_gate import require_liboqs

    require_liboqs()
    assert _keygen(tmp_path / "id", "--static-kem", "hqc3") == 1
    err = capsys.readouterr().err
    assert "not a static KEM" in err and "Classic-McEliece-460896f" in err
    assert not (tmp_path / "id").exists()


def test_verify_remembers_successes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An INIT is verified at admission and again by the responder: the repeat is
    answered from the memo, and no changed part (message, context, either signature,
    another identity's keys) passes because a neighbour verified."""
    from gateway.crypto import builtin

    me, other = LocalIdentity.generate(), LocalIdentity.generate()
    msg, ctx = b"INIT signed part", b"qsgw init"
    sig_ed, sig_ml = me.sign(msg, ctx)
    calls = []
    real = builtin.ML_DSA_65.verify
    monkeypatch.setattr(builtin.ML_DSA_65, "verify",
                        lambda *a: calls.append(1) or real(*a))
    assert me.public.verify(msg, sig_ed, sig_ml, ctx)
    assert me.public.verify(msg, sig_ed, sig_ml, ctx)
    assert len(calls) == 1  # the second answer came from the memo
    other_ed, other_ml = other.sign(msg, ctx)
    assert not me.public.verify(msg + b"!", sig_ed, sig_ml, ctx)
    assert not me.public.verify(msg, sig_ed, sig_ml, b"qsgw resp")
    assert not me.public.verify(msg, other_ed, sig_ml, ctx)
    assert not me.public.verify(msg, sig_ed, other_ml, ctx)
    assert not other.public.verify(msg, sig_ed, sig_ml, ctx)
    assert not me.public.verify(msg, sig_ed, bytes(len(sig_ml)), ctx)
