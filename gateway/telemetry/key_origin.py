"""Where a QKD key came from, as the audit trail and MQTT say it.

ETSI GS QKD 014 KMEs return a `key_ID_extension` object with each key (on
enc_keys and dec_keys). This module turns a key_ID and that object into an
audit-safe summary. The extension is metadata, never key material; it is
also untrusted input (the KME says it), so every field is checked and a bad
one is summarised as ``"route": "unrecognised"``: nothing here raises.

The shapes (JSON):

- the qsgw route extension (`kms_client.sim` and KMEs that follow it),
  ``{"qsgw_route": {"kind", "link", "path"}}``::

    {"key_ID": "...", "route": "trusted_relay", "link": "redu-singapore-relay",
     "path": ["KME_ESEC_REDU", "KME_LUX_DC", "KME_SINGAPORE"],
     "relays": ["KME_LUX_DC"], "hub": null}

  ``route`` is ``local``, ``point_to_point``, ``mdi_hub`` or ``trusted_relay``;
  ``relays`` lists the trusted nodes the key passed through (the interior of
  the path, only for ``trusted_relay``; else ``[]``); ``hub`` names the
  untrusted MDI hub (only for ``mdi_hub``; else null). Other members of the
  extension, if any, follow under ``extension`` as below.
- another vendor's extension: ``{"key_ID": "...", "extension": {...}}``, the
  object itself when its compact JSON is at most 1024 bytes, else
  ``{"truncated": true, "bytes": n}``;
- a malformed ``qsgw_route`` or an extension that is not an object:
  ``{"key_ID": "...", "route": "unrecognised", "extension": <as above>}``;
- no extension (absent, null or ``{}``): ``{"key_ID": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

ROUTE_KEY = "qsgw_route"
ROUTE_KINDS = ("local", "point_to_point", "mdi_hub", "trusted_relay")
UNRECOGNISED = "unrecognised"
MAX_EXTENSION_BYTES = 1024
MAX_NAME_CHARS = 128  # a KME, hub or link ID
MAX_PATH = 16  # nodes on a path, both ends included


def _compact(obj: object) -> bytes | None:
    """The audit trail's JSON of `obj` (compact, sorted, ASCII), or None if it has none."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()
    except (TypeError, ValueError, RecursionError):
        return None


def capped_extension(obj: object) -> Any:
    """`obj` itself if its compact JSON is at most 1024 bytes, else a stand-in."""
    data = _compact(obj)
    if data is None:
        return {"unserialisable": True}
    if len(data) > MAX_EXTENSION_BYTES:
        return {"truncated": True, "bytes": len(data)}
    # A fresh copy: the audit record never shares a mutable object with the KME's answer.
    return json.loads(data)


def _name(value: object) -> str | None:
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_CHARS
        and value.isprintable()
        and value.strip() == value
    ):
        return value
    return None


def _route(raw: object) -> dict[str, Any] | None:
    """The checked fields of a `qsgw_route` object, or None when it is malformed."""
    if not isinstance(raw, Mapping):
        return None
    kind = raw.get("kind")
    link = _name(raw.get("link"))
    path = raw.get("path")
    if kind not in ROUTE_KINDS or link is None or not isinstance(path, list):
        return None
    if not 1 <= len(path) <= MAX_PATH:
        return None
    names = [_name(p) for p in path]
    nodes = [n for n in names if n is not None]
    if len(nodes) != len(path):
        return None
    # The path's length must fit the kind: a relay has at least one trusted node
    # inside, an MDI hub exactly one (untrusted) node inside.
    expected = {"local": len(nodes) == 1, "point_to_point": len(nodes) == 2,
                "mdi_hub": len(nodes) == 3, "trusted_relay": len(nodes) >= 3}
    if not expected[str(kind)]:
        return None
    return {
        "route": kind,
        "link": link,
        "path": nodes,
        "relays": nodes[1:-1] if kind == "trusted_relay" else [],
        "hub": nodes[1] if kind == "mdi_hub" else None,
    }


def key_origin(key_id: str, extension: object) -> dict[str, Any]:
    """The audit-safe summary of where the key `key_id` came from (see the module doc)."""
    out: dict[str, Any] = {"key_ID": str(key_id)}
    try:
        if extension is None or (isinstance(extension, Mapping) and not extension):
            return out
        if not isinstance(extension, Mapping) or not all(
            isinstance(k, str) for k in extension
        ):
            out["route"] = UNRECOGNISED
            out["extension"] = capped_extension(extension)
            return out
        if ROUTE_KEY not in extension:
            out["extension"] = capped_extension(dict(extension))
            return out
        route = _route(extension[ROUTE_KEY])
        if route is None:
            out["route"] = UNRECOGNISED
            out["extension"] = capped_extension(dict(extension))
            return out
        out.update(route)
        rest = {k: v for k, v in extension.items() if k != ROUTE_KEY}
        if rest:
            out["extension"] = capped_extension(rest)
        return out
    except Exception:  # untrusted input must never take the audit record down
        return {"key_ID": str(key_id), "route": UNRECOGNISED}


def key_origins(
    key_ids: Sequence[str], extensions: Mapping[str, object] | None
) -> list[dict[str, Any]]:
    """One summary per key_ID, in order; a key_ID with no extension gets {"key_ID"}."""
    ext = extensions or {}
    return [key_origin(kid, ext.get(kid)) for kid in key_ids]


def describe_origin(summary: object) -> str:
    """One human line for `qsgw audit show` (the audit file is read as untrusted too)."""
    if not isinstance(summary, Mapping):
        return _show(summary)
    kid = _show(summary.get("key_ID"))
    route = summary.get("route")
    ext = f" key_ID_extension={_show(summary['extension'])}" if "extension" in summary else ""
    if route in ROUTE_KINDS:
        path = summary.get("path")
        path_text = (" > ".join(_show(p) for p in path) if isinstance(path, list)
                     else _show(path))
        text = f"key {kid}: {route} link={_show(summary.get('link'))} path={path_text}"
        relays = summary.get("relays")
        if route == "trusted_relay":
            names = ",".join(_show(r) for r in relays) if isinstance(relays, list) else _show(
                relays)
            text += f" trusted_relays={names}"
        if route == "mdi_hub":
            text += f" untrusted_hub={_show(summary.get('hub'))}"
        return text + ext
    if route == UNRECOGNISED:
        return f"key {kid}: unrecognised route{ext}"
    if ext:
        return f"key {kid}: vendor{ext}"
    return f"key {kid}: no route given by the KME"


def _show(value: object) -> str:
    """A bare name if it is a plain printable word, else its JSON (escapes control chars)."""
    if isinstance(value, str) and value and value.isprintable() and " " not in value:
        return value
    data = _compact(value)
    return data.decode() if data is not None else repr(type(value).__name__)
