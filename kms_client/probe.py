"""A conformance probe of one KME pair against ETSI GS QKD 014 V1.1.1, for operators.

It acts as both SAEs of a pair (the master at its KME, the slave at its own) over
mutual TLS, makes each call the spec defines, and records for every check the exact
answer (status code, error message, or a summary of the keys: never a key), whether
it is what the spec asks for, and which ``kme.dialect`` / ``kme.tls`` settings would
let qsgw work with what it found. It spends a handful of keys and fetches every key
it asks for at both ends, so it leaves no undelivered keys behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from kms_client._dialects import DIALECTS, Call
from kms_client._errors import KmsError
from kms_client._models import KeyContainer, Status
from kms_client._tls import TlsOptions, client_ssl_context
from kms_client._tls_triage import TlsFailure, Where, describe, fetch_fingerprints, triage

_EXT = "qsgwprobe_unknown_mandatory_extension"


@dataclass(frozen=True)
class Sae:
    """One SAE the probe acts as: its ID, credentials, and its KME's address."""

    sae_id: str
    url: str
    kme_id: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    tls: TlsOptions = field(default_factory=TlsOptions)


@dataclass
class Check:
    name: str
    expected: str
    ok: bool | None = None  # None: skipped
    answer: str = ""


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (TLS or transport failure)
    summary: str
    body: Any = None  # parsed JSON, or None
    raw: bytes = b""
    json_error: bool = False  # an error body that is JSON with a string message
    tls: TlsFailure | None = None


@dataclass
class Report:
    master: str
    slave: str
    checks: list[Check] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_json(self) -> dict[str, Any]:
        return {"master": self.master, "slave": self.slave,
                "checks": [asdict(c) for c in self.checks], "suggestions": self.suggestions,
                "passed": not self.failed}


def _summary(resp: httpx.Response) -> tuple[str, Any, bool]:
    ctype = resp.headers.get("content-type", "")
    try:
        body = json.loads(resp.content) if resp.content else None
    except ValueError:
        return (f"HTTP {resp.status_code}, non-JSON body ({ctype or 'no content type'}, "
                f"{len(resp.content)} bytes)", None, False)
    if resp.status_code == 200:
        keys = body.get("keys") if isinstance(body, dict) else None
        if isinstance(keys, list):
            return f"HTTP 200, {len(keys)} key(s)", body, False  # never the keys themselves
        return "HTTP 200", body, False
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return f"HTTP {resp.status_code} {json.dumps(message[:160])}", body, True
    return f"HTTP {resp.status_code}, " + ("empty body" if body is None else
                                           "JSON without a message"), body, False


class Probe:
    def __init__(self, master: Sae, slave: Sae, *, timeout: float = 10.0,
                 intruder: Sae | None = None, extra_slave: Sae | None = None) -> None:
        self.master, self.slave = master, slave
        self.intruder, self.extra_slave = intruder, extra_slave
        self.timeout = timeout
        self.report = Report(master.sae_id, slave.sae_id)
        self._clients: dict[str, tuple[httpx.AsyncClient, Where]] = {}
        self._errors: list[tuple[str, Answer]] = []  # every 4xx/5xx seen, for the body check

    # ---------------------------------------------------------------- transport

    def _client(self, sae: Sae) -> tuple[httpx.AsyncClient, Where]:
        if sae.sae_id not in self._clients:
            ctx = client_ssl_context(sae.ca_file, sae.cert_file, sae.key_file,
                                     kme_id=sae.kme_id, options=sae.tls)
            client = httpx.AsyncClient(base_url=sae.url, verify=ctx, trust_env=False,
                                       timeout=httpx.Timeout(self.timeout))
            self._clients[sae.sae_id] = (client, Where(sae.url, sae.kme_id, sae.ca_file,
                                                       sae.cert_file, sae.key_file, ctx,
                                                       self.timeout))
        return self._clients[sae.sae_id]

    async def _ask(self, sae: Sae, method: str, other: str, leaf: str, *,
                   params: dict[str, str] | None = None, body: Any = None) -> Answer:
        client, where = self._client(sae)
        path = f"/api/v1/keys/{quote(other, safe='')}/{leaf}"
        try:
            resp = await client.request(
                method, path, params=params,
                content=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json"} if body is not None else None)
        except httpx.TransportError as exc:
            failure = await triage(exc, where)
            text = failure.message if failure else f"{type(exc).__name__}: {describe(exc)}"
            return Answer(0, text, tls=failure)
        summary, parsed, json_error = _summary(resp)
        answer = Answer(resp.status_code, summary, parsed, resp.content, json_error)
        if resp.status_code >= 400 and resp.status_code != 401:
            self._errors.append((f"{method} {leaf}", answer))
        return answer

    async def _enc(self, body: dict[str, Any] | None = None, *, get: dict[str, str] | None = None
                   ) -> Answer:
        if get is not None:
            return await self._ask(self.master, "GET", self.slave.sae_id, "enc_keys", params=get)
        return await self._ask(self.master, "POST", self.slave.sae_id, "enc_keys", body=body or {})

    async def _dec(self, ids: Sequence[str], *, as_sae: Sae | None = None, get: bool = False
                   ) -> Answer:
        sae = as_sae or self.slave
        if get:
            return await self._ask(sae, "GET", self.master.sae_id, "dec_keys",
                                   params={"key_ID": ids[0]})
        return await self._ask(sae, "POST", self.master.sae_id, "dec_keys",
                               body={"key_IDs": [{"key_ID": k} for k in ids]})

    def _add(self, name: str, expected: str, ok: bool | None, answer: str) -> Check:
        check = Check(name, expected, ok, answer)
        self.report.checks.append(check)
        return check

    # ------------------------------------------------------------------ checks

    async def run(self) -> Report:
        try:
            status = await self._status()
            if status is not None:
                await self._key_checks(status)
                self._error_bodies()
        finally:
            for client, _ in self._clients.values():
                await client.aclose()
        return self.report

    async def _status(self) -> Status | None:
        ans = await self._ask(self.master, "GET", self.slave.sae_id, "status")
        if ans.tls is not None or ans.status == 0:
            self._add("tls.master", "mutual TLS with the master's KME", False, ans.summary)
            await self._suggest_tls(self.master, ans)
            return None
        self._add("tls.master", "mutual TLS with the master's KME", True, "handshake done")
        expected = "200 with every status field of the right type"
        if ans.status != 200:
            self._add("status.fields", expected, False, ans.summary)
            return None
        try:
            status = Status.parse(ans.raw)
        except KmsError as exc:
            self._add("status.fields", expected, False, f"HTTP 200 but {exc}")
            return None
        self._add("status.fields", expected, True,
                  f"key_size {status.key_size}, stored {status.stored_key_count}, "
                  f"max_key_per_request {status.max_key_per_request}, sizes "
                  f"{status.min_key_size}..{status.max_key_size}, "
                  f"max_SAE_ID_count {status.max_sae_id_count}")
        return status

    def _keys(self, ans: Answer, number: int, size: int | None) -> tuple[KeyContainer | None, str]:
        if ans.status != 200:
            return None, ans.summary
        try:
            return KeyContainer.parse(ans.raw, expected_number=number,
                                      expected_size_bits=size), ans.summary
        except KmsError as exc:
            return None, f"{ans.summary}, but {exc}"

    async def _pair(self, name: str, expected: str, enc: Answer, number: int, size: int | None,
                    *, get: bool = False) -> KeyContainer | None:
        """An enc_keys answer checked, then the same keys fetched by the slave."""
        got, text = self._keys(enc, number, size)
        if got is None:
            self._add(name, expected, False, text)
            return None
        self._add(name, expected, True, text + (f" of {size} bits" if size else ""))
        back = {"enc_keys.post": "dec_keys.post", "enc_keys.get": "dec_keys.get"}
        await self._fetch_back(got, get=get, name=back.get(name, f"{name}.at_slave"))
        return got

    async def _fetch_back(self, got: KeyContainer, *, get: bool = False,
                          name: str | None = None) -> bool:
        ids = list(got.key_ids)
        name = name or ("dec_keys.get" if get else "dec_keys.post")
        ans = await self._dec(ids[:1] if get else ids, get=get)
        mine, text = self._keys(ans, 1 if get else len(ids), None)
        same = mine is not None and {k.key_id: k.key for k in mine.keys} == {
            k.key_id: k.key for k in got.keys if not get or k.key_id == ids[0]}
        self._add(name, "the slave gets the same keys by key_ID", same,
                  text if same or mine is None else text + ", but not the master's keys")
        if get and same and len(ids) > 1:  # leave nothing pending
            await self._dec(ids[1:])
        return same

    async def _key_checks(self, st: Status) -> None:
        size, two = st.key_size, min(2, st.max_key_per_request)
        got = await self._pair("enc_keys.post", f"POST: {two} key(s) of {size} bits", await
                               self._enc({"number": two, "size": size}), two, size)
        other = next((s for s in (st.min_key_size, st.max_key_size)
                      if s % 8 == 0 and s != size), size)
        await self._pair("enc_keys.get", f"GET: number and size honoured (1 key of {other} bits)",
                         await self._enc(get={"number": "1", "size": str(other)}), 1, other,
                         get=True)
        if got is not None:
            ans = await self._dec(list(got.key_ids)[:1])
            self._add("keys.single_use", "a key_ID delivered once is refused after",
                      ans.status == 400, ans.summary)
        await self._sizes(st)
        await self._refusals(st)
        await self._kept()
        await self._multicast(st)

    async def _sizes(self, st: Status) -> None:
        sizes = sorted({s for s in (st.min_key_size, st.max_key_size) if s % 8 == 0})
        for s in sizes:
            await self._pair(f"size.exact_{s}", f"a key of exactly {s} bits",
                             await self._enc({"number": 1, "size": s}), 1, s)
        for name, bad in (("size.not_multiple_of_8", st.key_size + 1),
                          ("size.too_big", st.max_key_size + 8)):
            ans = await self._enc({"number": 1, "size": bad})
            self._add(name, f"size {bad} refused with 400", ans.status == 400, ans.summary)
            await self._drain(ans)

    async def _drain(self, ans: Answer) -> None:
        """A KME that wrongly handed out keys: fetch them at the slave too."""
        if ans.status == 200 and isinstance(ans.body, dict):
            ids = [k.get("key_ID") for k in ans.body.get("keys", []) if isinstance(k, dict)]
            named = [i for i in ids if isinstance(i, str)]
            if named:
                await self._dec(named)

    async def _refusals(self, st: Status) -> None:
        ans = await self._enc({"number": 1, "extension_mandatory": [{_EXT: True}]})
        self._add("extension_mandatory.unknown", "an unknown mandatory extension refused (400)",
                  ans.status == 400, ans.summary)
        await self._drain(ans)
        unknown = await self._dec([str(uuid.uuid4())])
        read = DIALECTS["etsi"].outcome(unknown.status, _message(unknown), "dec_keys")
        self._add("dec_keys.unknown_key", "400 \"one or more keys specified are not found on KME\"",
                  unknown.status == 400 and read == "not-found", unknown.summary)
        if read != "not-found":
            self._suggest_dialect(unknown, "dec_keys", ("not-found", "not-yet"),
                                  "an unknown key_ID is read as not found")
        fresh = await self._enc({"number": 1})
        got, _ = self._keys(fresh, 1, None)
        if got is None:
            self._add("dec_keys.unnamed_sae", "401 for an SAE not named in enc_keys", None,
                      "skipped: no key to ask for")
            return
        intruder = self.intruder or self.master
        ans = await self._dec(list(got.key_ids), as_sae=intruder)
        refused_tls = ans.status == 0 and ans.tls is not None and ans.tls.kind == "client-cert"
        self._add("dec_keys.unnamed_sae", f"401 when {intruder.sae_id} asks for keys named to "
                  f"{self.slave.sae_id}", ans.status == 401 or refused_tls, ans.summary)
        await self._fetch_back(got, name="dec_keys.after_refusal")

    async def _kept(self) -> None:
        first, second = await self._enc({"number": 1}), await self._enc({"number": 1})
        a, _ = self._keys(first, 1, None)
        b, _ = self._keys(second, 1, None)
        if a is None or b is None:
            self._add("keys.kept_across_requests", "undelivered keys survive a later enc_keys",
                      None, "skipped: enc_keys failed")
            return
        kept = await self._fetch_back(a, name="keys.kept_across_requests")
        await self._dec(list(b.key_ids))
        if not kept:
            self.report.suggestions.append(
                "kme.prefetch: false (this KME drops undelivered keys on the next enc_keys: "
                "never fetch ahead, one enc_keys per handshake)")

    async def _multicast(self, st: Status) -> None:
        name, extra = "multicast", self.extra_slave
        if st.max_sae_id_count == 0:
            other = extra.sae_id if extra else "QSGW_PROBE_SAE"
            ans = await self._enc({"number": 1, "additional_slave_SAE_IDs": [other]})
            self._add(name, "max_SAE_ID_count 0: additional_slave_SAE_IDs refused (400)",
                      ans.status == 400, ans.summary)
            await self._drain(ans)
            return
        if extra is None:
            self._add(name, "keys shared with an additional slave", None,
                      "skipped: give a second slave SAE (--extra-slave) to test multicast")
            return
        ans = await self._enc({"number": 1, "additional_slave_SAE_IDs": [extra.sae_id]})
        got, text = self._keys(ans, 1, None)
        if got is None:
            self._add(name, "keys shared with an additional slave", False, text)
            return
        theirs = await self._dec(list(got.key_ids), as_sae=extra)
        mine = await self._dec(list(got.key_ids))
        both = theirs.status == 200 and mine.status == 200 and _same_keys(theirs, mine)
        self._add(name, "keys shared with an additional slave: both slaves get them", both,
                  f"{extra.sae_id}: {theirs.summary}; {self.slave.sae_id}: {mine.summary}")

    def _error_bodies(self) -> None:
        bad = [f"{call}: {a.summary}" for call, a in self._errors if not a.json_error]
        self._add("error_body.json", "every error answer a JSON body with a message",
                  not bad, "; ".join(bad[:3]) or f"{len(self._errors)} error answers, all JSON")
        for call, a in self._errors:
            leaf = call.split()[-1]
            if leaf in ("enc_keys", "dec_keys") and a.status == 422:
                self.report.suggestions.append(
                    "this KME answers validation errors with 422 (not in the spec); "
                    "every dialect reads 422 as a refused request")
                break

    # ---------------------------------------------------------------- suggestions

    def _suggest_dialect(self, ans: Answer, call: Call, wanted: tuple[str, ...], what: str
                         ) -> None:
        message = _message(ans)
        fits = [d.name for d in DIALECTS.values()
                if d.name != "etsi" and d.outcome(ans.status, message, call) in wanted]
        if fits:
            self.report.suggestions.append(f"kme.dialect: {fits[0]} ({what}: {ans.summary})")
        else:
            self.report.suggestions.append(
                f"kme.dialect_rules: - {{status: {ans.status}, message: {json.dumps(message)}, "
                f"calls: [{call}], means: {wanted[0]}}} ({what}; no known dialect reads it)")

    async def _suggest_tls(self, sae: Sae, ans: Answer) -> None:
        kind = ans.tls.kind if ans.tls else ""
        if kind == "cipher":
            self.report.suggestions.append("kme.tls.ciphers: see the tls check (legacy suites)")
        elif kind == "hostname":
            prints = await fetch_fingerprints(sae.url, sae.cert_file, sae.key_file, self.timeout)
            hint = f" or cert_sha256: {prints[0]} / spki_sha256: {prints[1]}" if prints else ""
            self.report.suggestions.append(f"kme.tls.verify: kme-id{hint}")


def _message(ans: Answer) -> str:
    if isinstance(ans.body, dict) and isinstance(ans.body.get("message"), str):
        return str(ans.body["message"])
    return ""


def _same_keys(a: Answer, b: Answer) -> bool:
    try:
        ka, kb = KeyContainer.parse(a.raw), KeyContainer.parse(b.raw)
    except KmsError:
        return False
    return {k.key_id: k.key for k in ka.keys} == {k.key_id: k.key for k in kb.keys}


def render(report: Report) -> str:
    """The table an operator reads: check, result, what the KME answered."""
    rows = [("CHECK", "RESULT", "ANSWER")]
    for c in report.checks:
        rows.append((c.name, {True: "pass", False: "FAIL", None: "skip"}[c.ok], c.answer))
    width = max(len(r[0]) for r in rows)
    out = [f"KME conformance (ETSI GS QKD 014 V1.1.1): master {report.master}, "
           f"slave {report.slave}"]
    out += [f"{n:<{width}}  {r:<6}  {a}" for n, r, a in rows]
    fails = report.failed
    out.append(f"{len(report.checks) - len(fails)} of {len(report.checks)} checks passed"
               + (f"; failed: {', '.join(c.name for c in fails)}" if fails else ""))
    if report.suggestions:
        out.append("suggested qsgw settings for this KME:")
        out += [f"  {s}" for s in dict.fromkeys(report.suggestions)]
    elif not fails:
        out.append("suggested qsgw settings: the defaults (kme.dialect: etsi, kme.tls.verify: "
                   "hostname)")
    return "\n".join(out)
