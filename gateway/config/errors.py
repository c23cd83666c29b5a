"""Config errors: `ConfigIssue` (file, line, field, message), `ConfigError`, and the
mapping of pydantic errors to messages that say what is allowed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import (
    BaseModel,
    ValidationError,
)

from gateway.config.values import (
    _HOSTPORT_HINT,
    _NAME_PATTERN,
    _PPK_ID_PATTERN,
    _PROPOSAL_PATTERN,
    _SAE_PATTERN,
    _TOPIC_PATTERN,
)

if TYPE_CHECKING:  # yamlloc raises ConfigError: a runtime import would be a cycle
    from gateway.config.yamlloc import Loc, Located


class ConfigIssue(NamedTuple):
    """One problem: `(file, line, field, message)`, plus the column (1-based; 0 = unknown)."""

    file: str
    line: int
    field: str
    message: str
    column: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """The config cannot be used; `errors` lists every problem found."""

    def __init__(self, errors: Sequence[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def _allowed_keys(loc: Loc) -> list[str] | None:
    """The keys allowed in the mapping at `loc`, found by walking the models."""
    # Here, not at the top: yamlloc imports this module and stays free of the models.
    from gateway.config.models_gateway import GatewayConfig
    from gateway.config.models_tunnels import CertAuth, IpsecTunnel, PskAuth, WireGuardTunnel

    model: Any = GatewayConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _model_of(model.model_fields[part].annotation)
        else:
            # a union tag: pick the member it names
            tags = {
                "wireguard": WireGuardTunnel,
                "ipsec": IpsecTunnel,
                "psk": PskAuth,
                "cert": CertAuth,
            }
            if part in tags:
                model = tags[str(part)]
            else:
                return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


def _model_of(annotation: Any) -> Any:
    """The model class inside Optional[...], tuple[..., ...] and Annotated[...]."""
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if args:
        models = [m for m in (_model_of(a) for a in args) if m is not None]
        if len(models) == 1:
            return models[0]
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and getattr(annotation, "__metadata__", None) is not None:
        return _model_of(origin)
    return None


_PATTERN_WORDS = {
    _NAME_PATTERN: "must be 1-64 characters of A-Z a-z 0-9 . _ -",
    _SAE_PATTERN: "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
    _PPK_ID_PATTERN: "must be 1-255 characters without spaces",
    _PROPOSAL_PATTERN: "must be a strongSwan proposal of a-z 0-9 _ -, "
    "e.g. aes256gcm16-prfsha384-x25519",
    _TOPIC_PATTERN: "must be 1-64 characters without spaces, + or #",
}

_TYPE_WORDS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string (quote it if YAML reads it as something else)",
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "is_instance_of": "has the wrong type",
}


def _message(err: Any, loc: Loc) -> tuple[str, Loc, bool]:
    """A user-fit message for one pydantic error, the loc to report and whether it is a key."""
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{loc[-1]}'{hint}", loc, True
    if kind == "missing":
        return "required field missing", loc, False
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return (
            (
                f"unknown {ctx.get('discriminator', 'type').strip(chr(39))} "
                f"{ctx.get('tag')!r}; allowed: {ctx.get('expected_tags', '')}"
            ),
            (*loc, "type"),
            False,
        )
    if kind == "union_tag_not_found":
        return "required field missing: type (wireguard or ipsec)", (*loc, "type"), False
    if kind in _TYPE_WORDS:
        if kind == "is_instance_of":
            hint = {
                "HostPort": f"must be a string: {_HOSTPORT_HINT}",
                "Path": "must be a path (a string)",
            }.get(str(err.get("ctx", {}).get("class", "")), "has the wrong type")
            return hint, loc, False
        return _TYPE_WORDS[kind], loc, False
    if kind == "string_pattern_mismatch":
        pattern = str(err.get("ctx", {}).get("pattern", ""))
        words = _PATTERN_WORDS.get(pattern, f"must match {pattern}")
        return words, loc, False
    if kind == "literal_error":
        return str(err["msg"]).replace("Input should be", "must be"), loc, False
    if kind == "too_short":
        n = err.get("ctx", {}).get("min_length", 1)
        return f"needs at least {n} item(s)", loc, False
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return str(err["msg"]).replace("Input should be", "must be"), loc, False
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, "), loc, False
    return str(err["msg"]), loc, False


def issues_from(exc: ValidationError, located: Located, file: str) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    errors = exc.errors(include_input=False, include_url=False)
    failed = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc: Loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(
            len(f) > len(loc) and f[: len(loc)] == loc for f in failed
        ):
            continue  # the list is short only because its items failed: those are reported
        msg, loc, is_key = _message(err, loc)
        out.append(located.issue(file, loc, msg, key_node=is_key))
    return out
