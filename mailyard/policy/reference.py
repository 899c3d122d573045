"""docs/configuration.md, written from the typed model itself: every key,
its type, its default and the comment above it in config.py, so the page
cannot drift (tests/unit/test_config_reference.py compares them).

    python3 -m mailyard.policy.reference > docs/configuration.md
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing

from mailyard.policy.config import Config, DomainConfig

HEADER = """\
# Configuration reference

Generated from `mailyard/policy/config.py` by `python3 -m mailyard.policy.reference`;
do not edit by hand (a test fails when this page and the model differ).

mailyard reads one main file (`--config FILE`, else `./mailyard.toml`) and
the per-domain files `DOMAIN.toml` in its `policy_dir` (default: `policy.d`
next to the main file). A file names only what it changes; every key below
shows its default. `mailyard check` validates the main file and every domain
file and prints each error as `FILE:LINE: KEY: reason`; `mailyard config show`
prints the effective configuration, domain files included; `mailyard reload`
(or SIGHUP) applies a changed policy to the running services.
"""

_FIELD = re.compile(r"^\s+(\w+): [^=]+?(?:= (.*?))?\s*(?:#\s*(.*))?$")


def render() -> str:
    out = [HEADER]
    top = [f for f in dataclasses.fields(Config) if not _is_table(f)]
    out += _table("Top level", Config, top, "")
    for field in dataclasses.fields(Config):
        if field.name != "domains" and _is_table(field):
            out += _section(field, field.name)
    out += _domain_section()
    return "\n".join(out).rstrip("\n") + "\n"


def _is_table(field: dataclasses.Field) -> bool:
    hint = typing.get_type_hints(field.metadata.get("owner", Config)).get(field.name)
    return _tabular(hint)


def _tabular(hint) -> bool:
    if dataclasses.is_dataclass(hint):
        return True
    args = typing.get_args(hint)
    return bool(args) and dataclasses.is_dataclass(args[-1])


def _section(field: dataclasses.Field, dotted: str, owner=Config) -> list[str]:
    hint = typing.get_type_hints(owner)[field.name]
    if dataclasses.is_dataclass(hint):
        return _dataclass_section(hint, dotted, f"[{dotted}]")
    item = typing.get_args(hint)[-1]
    if typing.get_origin(hint) is list:
        return _dataclass_section(item, f"{dotted}[]", f"[[{dotted}]]")
    return _dataclass_section(item, f'{dotted}.NAME', f'[{dotted}."NAME"]')


def _dataclass_section(cls, dotted: str, title: str) -> list[str]:
    plain = [f for f in dataclasses.fields(cls) if not _tabular(typing.get_type_hints(cls)[f.name])]
    out = _table(f"`{title}`", cls, plain, f"{dotted}." if dotted else "")
    for field in dataclasses.fields(cls):
        if _tabular(typing.get_type_hints(cls)[field.name]):
            out += _section(field, f"{dotted}.{field.name}" if dotted else field.name, cls)
    return out


def _domain_section() -> list[str]:
    out = ["## Domain policy files", "",
           "Each `DOMAIN.toml` in `policy_dir` (or a `[domains.\"DOMAIN\"]` table of the main "
           "file) holds these keys at its top level.", ""]
    return out + _dataclass_section(DomainConfig, "", "DOMAIN.toml")[2:]


def _table(title: str, cls, fields: list[dataclasses.Field], prefix: str) -> list[str]:
    notes = _comments(cls)
    hints = typing.get_type_hints(cls)
    doc = inspect.getdoc(cls) if cls is not Config else ""
    out = [f"## {title}", ""]
    if doc and doc != _auto_doc(cls):
        out += [" ".join(doc.split()), ""]
    if not fields:
        return out
    out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    instance = cls()
    for field in fields:
        default = _format(getattr(instance, field.name))
        meaning = notes.get(field.name, "").replace("|", "\\|")
        out.append(f"| `{prefix}{field.name}` | {_type(hints[field.name])} | "
                   f"`{default}` | {meaning} |")
    return out + [""]


def _auto_doc(cls) -> str:
    """The docstring dataclasses makes up for a class without one."""
    return f"{cls.__name__}{inspect.signature(cls)}".replace(" -> None", "")


def _comments(cls) -> dict[str, str]:
    """Each field's comment: the comment lines right above it, then its own."""
    notes, pending = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").rstrip())
            continue
        match = _FIELD.match(line)
        if match and not stripped.startswith(("def ", "@", '"""')):
            own = match.group(3) or ""
            notes[match.group(1)] = " ".join(p for p in [*pending, own] if p)
        pending = []
    return notes


def _type(hint) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"list of {_type(args[0])}s" if args[0] in names else f"list of {_type(args[0])}"
    if origin is dict:
        return f"table: name = {_type(args[1])}"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _format(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_format(v)}" for k, v in value.items()) + "}"
    return str(value)


if __name__ == "__main__":
    print(render(), end="")
