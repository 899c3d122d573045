"""The RFC 7208 conformance suite (openspf.org, as shipped with pyspf) run
through mailyard's SPF evaluation and resolver.

Each scenario's zone data is served by a DNS source the way the suite's own
driver serves it (TXT duplicated from SPF entries unless TXT is given, a bare
TIMEOUT entry failing every other type); the lookups go through
`mailyard.mta.dns.Resolver` and the pyspf lookup function it binds.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from mailyard.mta.dns import Answer, DnsTempError, Record, Resolver, normalize
from mailyard.mta.spf import check_spf

SUITE = Path(__file__).resolve().parents[2].parent / "shared/testdata/spf/rfc7208-tests.yml"


class SuiteZone:
    """One scenario's `zonedata`, answered as an authoritative server would."""

    def __init__(self, zonedata: dict):
        self.entries: dict[str, list] = {}
        for name, rrs in zonedata.items():
            entries, generated, has_txt = [], [], False
            for rr in rrs:
                if rr == "TIMEOUT":
                    entries.append("TIMEOUT")
                    continue
                ((kind, value),) = rr.items()
                if kind in ("TXT", "SPF") and isinstance(value, str):
                    value = [value]
                if kind == "TXT":
                    has_txt = True
                elif kind == "SPF":
                    generated.append(("TXT", value))
                if value != ["NONE"]:
                    entries.append((kind, value))
            if not has_txt:
                entries.extend(generated)
            self.entries[normalize(name)] = entries

    def _record(self, name: str, kind: str, value) -> Record:
        if kind in ("TXT", "SPF"):
            value = tuple(s.encode("utf-8") for s in value)
        elif kind == "MX":
            value = (value[0], normalize(value[1]))
        elif kind in ("CNAME", "PTR"):
            value = normalize(value)
        return Record(name, kind, value, 300)

    async def query(self, name: str, rdtype: str) -> Answer:
        records: list[Record] = []
        seen: set[str] = set()
        while True:
            name = normalize(name)
            entries = self.entries.get(name)
            if entries is None:
                if name.startswith("error."):
                    raise DnsTempError("DNS timeout")
                return Answer(tuple(records), nxdomain=not records)
            found, cname = [], None
            for entry in entries:
                if entry == "TIMEOUT":
                    if not found:
                        raise DnsTempError("DNS timeout")
                    break
                kind, value = entry
                if kind == rdtype and value == "TIMEOUT":
                    raise DnsTempError("DNS timeout")
                if value == "TIMEOUT":
                    continue
                if kind == rdtype:
                    found.append(self._record(name, kind, value))
                elif kind == "CNAME":
                    cname = self._record(name, kind, value)
            if found or cname is None or name in seen:
                return Answer(tuple(records + found))
            seen.add(name)
            records.append(cname)
            name = cname.value


def load_suite() -> list[tuple[str, dict, dict]]:
    if not SUITE.exists():
        raise FileNotFoundError(f"the RFC 7208 suite is missing: {SUITE}")
    cases = []
    with SUITE.open("rb") as stream:
        for scenario in yaml.safe_load_all(stream):
            for name, test in scenario["tests"].items():
                cases.append((name, test, scenario["zonedata"]))
    return cases


async def run_case(test: dict, zonedata: dict) -> tuple[bool, str]:
    resolver = Resolver(SuiteZone(zonedata), timeout=5)
    got = await check_spf(resolver, test["host"], test["helo"], test["mailfrom"],
                          default_explanation="DEFAULT")
    allowed = test["result"] if isinstance(test["result"], list) else [test["result"]]
    ok = got.result in allowed
    if ok and "explanation" in test:
        ok = got.explanation == test["explanation"]
    return ok, f"{got.result} (explanation {got.explanation!r}), expected {allowed}"


async def test_rfc7208_suite_passes_whole(capsys):
    cases = load_suite()
    assert len(cases) >= 200, f"only {len(cases)} scenarios in {SUITE}"
    failures = []
    for name, test, zonedata in cases:
        ok, detail = await run_case(test, zonedata)
        if not ok:
            failures.append(f"{name}: {detail}")
    with capsys.disabled():
        print(f"\nRFC 7208 suite: {len(cases) - len(failures)}/{len(cases)} scenarios pass")
    assert not failures, "\n".join(failures)
