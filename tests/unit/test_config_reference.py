"""docs/configuration.md is generated from the typed model; it must list
every key the model has, with its current default."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mailyard.policy.config import Config
from mailyard.policy.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_reference_page_is_up_to_date():
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is out of date: "
        "python3 -m mailyard.policy.reference > docs/configuration.md")


def test_every_key_and_default_is_on_the_page():
    page = render()

    def walk(instance, prefix: str):
        for field in dataclasses.fields(instance):
            value = getattr(instance, field.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{field.name}.")
            elif field.name != "domains" and f"`[[{prefix}{field.name}]]`" not in page:
                yield f"{prefix}{field.name}", value  # (arrays of tables have a section)

    for key, value in walk(Config(), ""):
        rows = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
        assert len(rows) == 1, f"{key} is listed {len(rows)} times"
        if isinstance(value, bool):
            assert f"`{'true' if value else 'false'}`" in rows[0], rows[0]
        elif isinstance(value, (int, float, str)):
            assert f"`{value!r}`" in rows[0] or f'`"{value}"`' in rows[0], rows[0]
    for key in ("aliases", "lists", "catch_all", "plus_separator", "require_tls", "blocklist",
                "limits.max_message_size", "user_limits.NAME.max_recipients",
                "dkim[].selector"):
        assert f"| `{key}` |" in page, key
