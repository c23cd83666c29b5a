"""YAML with locations: compose a file into plain data (tuples for lists) and keep the node
tree, so that a field path maps back to its line and column.

Public, for every YAML file qsgw reads (the gateway config, qsgw_lab's scenario
files): `compose` refuses duplicate keys, merge keys and non-string keys, and
words bad indentation; `issue_at` turns a field path into a located `ConfigIssue`.
"""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]



class Located:
    """The composed YAML tree, kept to map error locations back to lines."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def find(self, loc: Loc, key_node: bool = False) -> tuple[yaml.Node | None, str]:
        """The node for `loc` (or the deepest existing ancestor) and the display path."""
        node = self.root
        path = ""
        for n, part in enumerate(loc):
            last = n == len(loc) - 1
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        node = k if (last and key_node) else v
                        path = f"{path}.{part}" if path else part
                        break
                else:
                    if last:  # a missing field: point at its parent mapping
                        path = f"{path}.{part}" if path else part
                    # else: a union tag, which is no key in the file
                continue
            if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if 0 <= part < len(node.value):
                    node = node.value[part]
                path = f"{path}[{part}]"
                continue
            if isinstance(part, int):
                path = f"{path}[{part}]"
            elif last:
                path = f"{path}.{part}" if path else part
        return node, path

    def issue(self, file: str, loc: Loc, msg: str, key_node: bool = False) -> ConfigIssue:
        """The issue `msg` at the line and column of the field `loc` (or its nearest ancestor)."""
        node, path = self.find(loc, key_node=key_node)
        line, col = (
            (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 0)
        )
        return ConfigIssue(file, line, path, msg, col)


_INDENT_PROBLEMS = ("mapping values are not allowed here", "expected <block end>",
                    "did not find expected key", "cannot start any token")


def _indentation_issue(text: str, line: int, problem: str) -> tuple[str, str] | None:
    """(enclosing field, words) for a YAML error that is bad indentation, else None."""
    lines = text.splitlines()
    if not any(p in problem for p in _INDENT_PROBLEMS) or not 0 < line <= len(lines):
        return None
    bad = lines[line - 1]
    indent = len(bad) - len(bad.lstrip(" \t"))
    # The enclosing field: the nearest earlier section (a `key:` line or a list
    # item) indented less, then its own enclosing sections.
    path: list[str] = []
    for n in range(line - 2, -1, -1):
        raw, stripped = lines[n], lines[n].strip()
        own = len(raw) - len(raw.lstrip(" "))
        if not stripped or stripped.startswith("#") or own >= indent:
            continue
        if stripped.startswith("- "):  # its index: the items before it at its indentation
            first = next((i for i in range(n - 1, -1, -1)
                          if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) < own),
                         -1)
            path.insert(0, f"[{sum(x.startswith(' ' * own + '- ') for x in lines[first + 1:n])}]")
        elif stripped.endswith(":"):
            path.insert(0, stripped[:-1].strip())
        else:
            continue  # a scalar field indented less is a sibling, not a section
        indent = own
    where = "".join(f".{p}" if not p.startswith("[") else p for p in path).lstrip(".")
    inside = f"the fields of {where}" if where else "the top-level sections"
    if "\t" in bad[: len(bad) - len(bad.lstrip(" \t"))]:
        return where, f"bad indentation: a tab indents line {line}; YAML indents with spaces only"
    return where, (
        f"bad indentation: line {line} is not aligned with {inside} (YAML nests by "
        "indentation: give every field of a section the same number of spaces)"
    )


_CLoader: Any = getattr(yaml, "CSafeLoader", None)

if _CLoader is not None:
    class _FastLoader(_CLoader):  # type: ignore[misc]
        """libyaml's loader, with the tags of short plain scalars cached: a config with
        thousands of peers repeats the same keys and values thousands of times, and
        PyYAML's resolver (regular expressions, in Python) was most of its load time."""

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is yaml.ScalarNode and isinstance(value, str) and len(value) <= 64:
                key = (value, tuple(implicit))
                tag = _TAGS.get(key)
                if tag is None:
                    if len(_TAGS) > 65536:
                        _TAGS.clear()
                    tag = _TAGS[key] = super().resolve(kind, value, implicit)
                return tag
            return super().resolve(kind, value, implicit)

_TAGS: dict[tuple[str, tuple[bool, ...]], str] = {}


def _fast_compose(text: str) -> yaml.Node | None:
    """The node tree by libyaml where PyYAML has it (a 10,000-peer config composes in
    a second, not a minute); None when it is absent or finds a problem, so that the
    pure-Python loader words the error as it always has."""
    if _CLoader is None or not text.strip():
        return None
    loader = _FastLoader(text)
    try:
        node: yaml.Node | None = loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return node


def compose(text: str, file: str) -> tuple[Any, Located, list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    loader: yaml.SafeLoader | None = None
    root = _fast_compose(text)
    try:
        if root is None:
            loader = yaml.SafeLoader(text)
            root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 0)
        hint = _indentation_issue(text, line, str(exc.problem or ""))
        if hint is not None:
            raise ConfigError([ConfigIssue(file, line, hint[0], hint[1], col)]) from None
        raise ConfigError(
            [ConfigIssue(file, line, "", f"YAML syntax: {exc.problem or exc}", col)]
        ) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        msg = f"character #x{exc.character:04x} is not allowed in YAML"
        raise ConfigError([ConfigIssue(file, line, "", msg, col)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, "", f"YAML: {exc}", 0)]) from None
    finally:
        if loader is not None:
            loader.dispose()

    def build(node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            firsts: dict[str, int] = {}
            for k, v in node.value:
                line, col = k.start_mark.line + 1, k.start_mark.column + 1
                if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge":
                    msg = "YAML merge keys (<<) are not supported; write the fields out"
                    issues.append(ConfigIssue(file, line, path, msg, col))
                    continue
                if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                    issues.append(ConfigIssue(file, line, path, "keys must be plain names", col))
                    continue
                key = k.value
                sub = f"{path}.{key}" if path else key
                if key in firsts:
                    issues.append(
                        ConfigIssue(
                            file,
                            line,
                            sub,
                            f"duplicate key '{key}' (first at line {firsts[key]}); "
                            "each key may appear once",
                            col,
                        )
                    )
                    continue
                firsts[key] = line
                out[key] = build(v, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            # Tuples: the models are frozen, and strict mode takes tuples as they are.
            return tuple(build(v, f"{path}[{i}]") for i, v in enumerate(node.value))
        try:
            return scalar_loader.construct_object(node)
        except yaml.YAMLError as exc:
            issues.append(
                ConfigIssue(
                    file,
                    node.start_mark.line + 1,
                    path,
                    f"bad value: {exc}",
                    node.start_mark.column + 1,
                )
            )
            return None

    # One constructor for every scalar: a loader per scalar cost most of the load
    # time of a config with thousands of peers.
    scalar_loader = yaml.SafeLoader("")
    try:
        data = build(root, "") if root is not None else None
    finally:
        scalar_loader.dispose()
    return data, Located(root), issues


def issue_at(
    located: Located, file: str, loc: Loc, msg: str, key_node: bool = False
) -> ConfigIssue:
    """The issue `msg` at the line and column of the field `loc` (or its nearest ancestor)."""
    return located.issue(file, loc, msg, key_node)
