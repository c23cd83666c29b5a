"""KME dialects: how a KME's error answers (status code + message) map to typed outcomes.

A ``Dialect`` is a list of ``Rule`` rows consulted in order before the strict ETSI GS
QKD 014 rows, which every dialect ends with. A KME's quirk therefore lives only in
the dialect chosen for that KME (``kme.dialect``): the default, ``etsi``, reads a
conforming KME exactly as the spec says, and a deviant row never applies to it.

Outcomes:

- ``unavailable``: a shortage or server-side fault; retried with backoff, then the next
  endpoint, then ``KmeUnavailable``.
- ``not-found`` / ``not-yet``: dec_keys named a key_ID that is not (or not yet) on the
  KME; asked again until the dec_keys deadline, then ``KmeKeyNotFound``.
- ``bad-request``: ``KmeBadRequest``, final. ``unauthorized``: ``KmeUnauthorized``, final.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kms_client._errors import KmeInvalidArgument

Outcome = Literal["unavailable", "not-found", "not-yet", "bad-request", "unauthorized"]
OUTCOMES: tuple[str, ...] = ("unavailable", "not-found", "not-yet", "bad-request", "unauthorized")
Call = Literal["status", "enc_keys", "dec_keys"]
CALLS: tuple[str, ...] = ("status", "enc_keys", "dec_keys")


@dataclass(frozen=True, slots=True)
class Rule:
    """One row: an answer with this status (and message words, on these calls) means that.

    ``message`` is matched case-insensitively as a substring of the error body's
    ``message``; ``None`` matches any message, or none.
    """

    status: int
    means: Outcome
    calls: tuple[Call, ...] = ("status", "enc_keys", "dec_keys")
    message: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise KmeInvalidArgument("a dialect rule's status must be an HTTP error (400-599)")
        if self.means not in OUTCOMES:
            raise KmeInvalidArgument(f"a dialect rule means one of {', '.join(OUTCOMES)}")
        if not self.calls or any(c not in CALLS for c in self.calls):
            raise KmeInvalidArgument(f"a dialect rule's calls are among {', '.join(CALLS)}")

    def matches(self, status: int, message: str, call: Call) -> bool:
        if status != self.status or call not in self.calls:
            return False
        return self.message is None or self.message.lower() in message.lower()


# ETSI GS QKD 014 V1.1.1 as written, plus codes no conforming KME sends (so reading
# them leniently never changes how a conforming KME is read).
ETSI_RULES: tuple[Rule, ...] = (
    Rule(400, "not-found", ("dec_keys",), "not found",
         "spec: \"one or more keys specified are not found on KME\""),
    Rule(404, "not-found", ("dec_keys",), None, "non-spec code for an unknown key_ID"),
    Rule(409, "not-found", ("dec_keys",), None, "non-spec code for an unknown key_ID"),
    Rule(400, "bad-request", note="spec: a refused request"),
    Rule(404, "bad-request", note="non-spec: unknown path"),
    Rule(409, "bad-request", note="non-spec"),
    Rule(422, "bad-request", note="non-spec: validation error"),
    Rule(401, "unauthorized", note="spec: this SAE may not make this call"),
    Rule(503, "unavailable", note="spec: server-side error"),
)
# Any other 5xx is retried as unavailable; any other code is a protocol error.


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    description: str
    rules: tuple[Rule, ...] = ()
    key_ids_name_master: bool = False  # master_SAE_ID inside each key_IDs entry

    def outcome(self, status: int, message: str, call: Call) -> Outcome | None:
        """What this answer means, or None when no row covers it."""
        for rule in (*self.rules, *ETSI_RULES):
            if rule.matches(status, message, call):
                return rule.means
        if 500 <= status <= 599:
            return "unavailable"
        return None

    def with_rules(self, extra: Sequence[Rule]) -> Dialect:
        """This dialect with operator-configured rows in front (``kme.dialect_rules``)."""
        if not extra:
            return self
        return Dialect(f"{self.name}+custom", self.description, (*extra, *self.rules),
                       self.key_ids_name_master)


DIALECTS: Mapping[str, Dialect] = {
    d.name: d
    for d in (
        Dialect("etsi", "ETSI GS QKD 014 V1.1.1 as written (the default)"),
        Dialect(
            "oss-flask",
            "the open-source Flask KME pair seen in the field",
            (
                Rule(400, "unavailable", ("enc_keys",),
                     "requested key amount exceeds the generated key count",
                     "an exhausted pool answered 400 instead of 503"),
                Rule(401, "not-yet", ("dec_keys",), "not involved in any key exchanges",
                     "a key_ID not yet at the slave's KME answered 401"),
                Rule(400, "not-found", ("dec_keys",), "requested keys do not exist",
                     "an unknown key_ID answered 400 with non-spec words"),
            ),
        ),
        Dialect(
            "oss-fastapi",
            "the open-source FastAPI + RabbitMQ KME seen in the field",
            (
                Rule(400, "unavailable", ("enc_keys",),
                     "more keys are requested than available",
                     "an exhausted pool answered 400 instead of 503"),
                Rule(401, "not-yet", ("dec_keys",), "not involved in any key exchanges",
                     "a key_ID not yet at the slave's KME answered 401"),
                Rule(400, "not-found", ("dec_keys",), "do not exist",
                     "an unknown key_ID answered 400 with non-spec words"),
                Rule(422, "bad-request", note="validation errors answered 422"),
            ),
        ),
        Dialect(
            "key-ids-master",
            "KMEs that want master_SAE_ID inside each dec_keys key_IDs entry",
            key_ids_name_master=True,
        ),
    )
}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise KmeInvalidArgument(
            f"unknown KME dialect {name!r}; known: {', '.join(DIALECTS)}"
        ) from None


def dialect_table() -> list[dict[str, object]]:
    """Every non-ETSI row of every dialect, then the ETSI rows (for docs and the probe)."""
    rows: list[dict[str, object]] = []
    for d in DIALECTS.values():
        for r in d.rules:
            rows.append({"dialect": d.name, "status": r.status, "message": r.message,
                         "calls": list(r.calls), "means": r.means, "note": r.note})
    for r in ETSI_RULES:
        rows.append({"dialect": "etsi (every dialect)", "status": r.status,
                     "message": r.message, "calls": list(r.calls), "means": r.means,
                     "note": r.note})
    return rows
