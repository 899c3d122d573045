"""The `mailyard` command line.

    mailyard [--config FILE] [--data-dir DIR] COMMAND ...

Global options come before the command, as in `mailyard --data-dir /srv/mail up`.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time

from mailyard.policy import config as config_module
from mailyard.policy import logs
from mailyard.policy.config import SERVICES, Config, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailyard", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", metavar="FILE",
                        help="TOML configuration (default: ./mailyard.toml when present)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where mailyard keeps its data (default: ./mailyard-data)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("up", help="run every enabled service in this process")
    run = commands.add_parser("run", help="run one service (for systemd)")
    run.add_argument("service", choices=SERVICES)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = user.add_parser("add", help="add a user (or set their password); the password "
                                      "is read from stdin, or prompted for on a terminal")
    add.add_argument("address")
    user.add_parser("list", help="list users")

    domain = commands.add_parser("domain", help="manage local domains").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    domain.add_parser("add", help="accept mail for a domain").add_argument("domain")
    domain.add_parser("list", help="list local domains")

    token = commands.add_parser("token", help="API tokens from the local issuer").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    issue = token.add_parser("issue", help="print a bearer JWT for ADDRESS")
    issue.add_argument("address")
    issue.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")

    conf = commands.add_parser("config", help="configuration").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    conf.add_parser("show", help="print the effective configuration as TOML, domain "
                                 "files included")
    commands.add_parser("check", help="validate the main file and every domain file; print "
                                      "each error with file, line and key")
    commands.add_parser("reload", help="check the configuration, then have the running "
                                       "services apply it (SIGHUP) without dropping sessions")
    trace = commands.add_parser("trace", help="every step of a message, with times: "
                                              "accepted, authenticated, queued, delivered, "
                                              "indexed, outbound attempts, bounces")
    trace.add_argument("id", help="a queue id, a Message-ID or an API message id")
    trace.add_argument("--json", action="store_true", help="print it as JSON lines")

    search = commands.add_parser("search", help="the search index").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    reindex = search.add_parser("reindex", help="rebuild the index of USER (default: every "
                                                "user) from the stored messages")
    reindex.add_argument("user", nargs="?")
    reindex.add_argument("--processes", type=int, default=None, metavar="N",
                         help="processes extracting text (default: one per core; 0: none)")

    imports = commands.add_parser(
        "import", help="import a user's mail from an mbox file or a Maildir; run it again "
                       "after an interruption to continue").add_subparsers(
        dest="action", required=True, metavar="FORMAT")
    mbox = imports.add_parser("mbox", help="an mbox file: its messages go under INBOX "
                                           "(or --label); Status/X-Status give read/starred")
    mbox.add_argument("user")
    mbox.add_argument("path")
    mbox.add_argument("--label", help="the label its messages get instead of INBOX")
    mbox.add_argument("--quoting", choices=("mboxrd", "mboxo"), default="mboxrd",
                      help='how ">From " lines are unquoted (default mboxrd)')
    maildir = imports.add_parser("maildir", help="a Maildir: folders become labels, "
                                                 "flags read state")
    maildir.add_argument("user")
    maildir.add_argument("path")

    export = commands.add_parser("export", help="write a user's mail as an mbox file "
                                                "(stdout by default) or a Maildir")
    export.add_argument("user")
    export.add_argument("--format", choices=("mbox", "maildir"), required=True)
    export.add_argument("--output", metavar="PATH",
                        help="the mbox file or the new Maildir (default for mbox: stdout)")
    export.add_argument("--label", help="only the messages carrying this label")

    schema = commands.add_parser("schema", help="the Cassandra keyspace of the metadata store"
                                 ).add_subparsers(dest="action", required=True, metavar="ACTION")
    schema.add_parser("apply", help="create the [cassandra] keyspace and any missing tables "
                                    "(idempotent; run before the first start and after upgrades)")

    dkim = commands.add_parser("dkim", help="DKIM signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    keygen = dkim.add_parser("keygen", help="write a new signing key for DOMAIN under the data "
                                            "directory and print its DNS record and config lines")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", help="default: the year and month, e.g. 202506r")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                        help="rsa (2048 bits, default) or ed25519 (RFC 8463; sign with both)")

    outq = commands.add_parser("queue", help="the outbound queue (like postqueue/postsuper)"
                               ).add_subparsers(dest="action", required=True, metavar="ACTION")
    outq.add_parser("list", help="messages waiting for remote delivery: id, state, size, next "
                                 "attempt, sender, last error, recipients (like mailq)")
    outq.add_parser("show", help="everything about one message, and its headers"
                    ).add_argument("id")
    retry = outq.add_parser("retry", help="attempt delivery now (held messages excepted)")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every message not on hold")
    for name, text in (("delete", "remove from the queue, without a bounce"),
                       ("hold", "keep from delivery until released"),
                       ("release", "take off hold and attempt delivery now")):
        outq.add_parser(name, help=text).add_argument("ids", nargs="+", metavar="ID")

    spam = commands.add_parser("spam", help="the sender blocklist of the spam filter"
                               ).add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("block", "file all mail from these addresses or domains as spam"),
                       ("unblock", "take these addresses or domains off the blocklist")):
        spam.add_parser(name, help=text).add_argument("entries", nargs="+", metavar="SENDER")
    spam.add_parser("blocked", help="list the blocklist")

    keys = commands.add_parser("keys", help="the secrets blobs are encrypted with at rest"
                               ).add_subparsers(dest="action", required=True, metavar="ACTION")
    keys.add_parser("list", help="key ids, the current one, and how many blobs use each")
    rotate = keys.add_parser("rotate", help="add a new current secret, then re-seal every "
                                            "blob under it (resumable: see reseal)")
    rotate.add_argument("--no-reseal", action="store_true",
                        help="only add the secret; new blobs use it, old ones keep theirs")
    keys.add_parser("reseal", help="re-seal every blob not yet under the current secret "
                                   "(finishes an interrupted rotate)")

    tier = commands.add_parser("tier", help="hot/cold blob tiers").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    tier_run = tier.add_parser("run", help="move the blobs of mail older than "
                                           "tiering.after_days to the cold tier now")
    tier_run.add_argument("--after-days", type=float, metavar="DAYS",
                          help="this age instead of tiering.after_days")

    gc = commands.add_parser("gc", help="blob garbage collection and mail retention"
                             ).add_subparsers(dest="action", required=True, metavar="ACTION")
    gc.add_parser("run", help="purge expired TRASH and SPAM, then free every blob no message "
                              "links, now").add_argument(
        "--dry-run", action="store_true", help="only print what would be purged and freed")

    status = commands.add_parser("status", help="services, queue lag, outbound queue, storage "
                                                "use and accounts on one screen (read-only)")
    status.add_argument("--json", action="store_true", help="print it as JSON, for scripts")

    check = commands.add_parser(
        "authcheck", help="evaluate SPF, DKIM, ARC and DMARC of a message read from stdin "
                          "and print the Authentication-Results header the MX would add")
    check.add_argument("--client-ip", required=True, metavar="IP")
    check.add_argument("--helo", required=True, metavar="NAME")
    check.add_argument("--mail-from", required=True, metavar="ADDR",
                       help='the reverse path; "" for the null sender')
    check.add_argument("--dns-zone", metavar="FILE",
                       help="answer DNS from this BIND zone file (default: dns.zone_file, "
                            "else the network)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("check", "reload"):  # they report every error themselves
        return COMMANDS[(args.command, None)](None, args) or 0
    try:
        config = config_module.load(args.config, args.data_dir)
    except ConfigError as exc:
        print(f"mailyard: configuration error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    logs.setup(config.log.level, config.log.mask_addresses, format=config.log.format)
    handler = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        return handler(config, args) or 0
    except UsageError as exc:
        print(f"mailyard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


class UsageError(Exception):
    pass


def cmd_up(config: Config, args) -> None:
    _run(config, config.services, args.config)


def cmd_run(config: Config, args) -> None:
    _run(config, [args.service], args.config)


def _run(config: Config, services: list[str], config_path: str | None) -> None:
    from mailyard.policy.launcher import run_services

    def ready(name, address):
        if address:
            print(f"mailyard: {name} listening on {address[0]}:{address[1]}", flush=True)

    global_args = ["--data-dir", config.data_dir]
    if config_path:
        global_args = ["--config", config_path, *global_args]
    asyncio.run(run_services(config, services, ready=ready, global_args=global_args,
                             config_file=config_path))


async def _with_metadata(config: Config, work):
    from mailyard.store.stores import Stores

    stores = Stores(config)
    try:
        return await work(await stores.metadata())
    finally:
        await stores.close()


def _read_password(address: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {address}: ")
        if first != getpass.getpass("Again: "):
            raise UsageError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user_add(config: Config, args) -> None:
    from argon2 import PasswordHasher

    from mailyard.store.metadata.base import User

    address = args.address.strip().lower()
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise UsageError(f"{args.address!r} is not an address (expected user@domain)")
    password = _read_password(address)
    if not password:
        raise UsageError("empty password")

    async def work(metadata):
        if not await metadata.has_domain(domain):
            raise UsageError(f"{domain} is not a local domain; add it first: "
                             f"mailyard domain add {domain}")
        existing = await metadata.get_user(address)
        created = existing.created_at_ms if existing else int(time.time() * 1000)
        await metadata.put_user(User(address, PasswordHasher().hash(password), created))
        return existing is None

    created = asyncio.run(_with_metadata(config, work))
    print(f"{'added' if created else 'updated'} {address}")


def cmd_user_list(config: Config, args) -> None:
    for user in asyncio.run(_with_metadata(config, lambda m: m.list_users())):
        print(user.address)


def cmd_domain_add(config: Config, args) -> None:
    domain = args.domain.strip().lower().rstrip(".")
    if not domain or "@" in domain or " " in domain:
        raise UsageError(f"{args.domain!r} is not a domain name")
    asyncio.run(_with_metadata(config, lambda m: m.add_domain(domain)))
    print(f"added {domain}")


def cmd_domain_list(config: Config, args) -> None:
    for domain in asyncio.run(_with_metadata(config, lambda m: m.list_domains())):
        print(domain)


def cmd_token_issue(config: Config, args) -> None:
    from mailyard.store.mailbox.auth import issue_token

    if args.ttl <= 0:
        raise UsageError("--ttl must be positive")
    print(issue_token(config, args.address, args.ttl))


def cmd_search_reindex(config: Config, args) -> None:
    from mailyard.searchd.reindex import Progress, reindex
    from mailyard.store.stores import Stores

    async def work() -> int:
        stores = Stores(config)
        try:
            if args.user and await (await stores.metadata()).get_user(args.user) is None:
                raise UsageError(f"no such user: {args.user}")
            return await reindex(config, stores, [args.user] if args.user else None, Progress(),
                                 processes=args.processes)
        finally:
            await stores.close()

    print(f"reindexed {asyncio.run(work())} messages")


def _transfer(config: Config, work):
    """Runs an import or export on the configured stores; bad arguments are usage errors."""
    from mailyard.store.stores import Stores
    from mailyard.store.transfer import SourceError

    async def run():
        stores = Stores(config)
        try:
            return await work(stores)
        finally:
            await stores.close()

    try:
        return asyncio.run(run())
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def cmd_import(config: Config, args) -> int:
    from pathlib import Path

    from mailyard.store.errors import StorageError
    from mailyard.store.transfer import Progress, import_mailbox

    try:
        report = _transfer(config, lambda stores: import_mailbox(
            config, stores, args.user, args.action, Path(args.path),
            label=getattr(args, "label", None), quoting=getattr(args, "quoting", "mboxrd"),
            progress=Progress("importing")))
    except StorageError as exc:
        print(f"mailyard: import stopped: {exc}; run the same command again to continue",
              file=sys.stderr)
        return 75  # EX_TEMPFAIL
    except KeyboardInterrupt:
        print("mailyard: import interrupted; run the same command again to continue",
              file=sys.stderr)
        return 130
    for warning in report.warnings:
        print(f"mailyard: warning: {warning}", file=sys.stderr)
    for where, why in report.bad:
        print(f"mailyard: malformed (stored raw): {where}: {why}", file=sys.stderr)
    print(report.summary(args.user.strip().lower()))
    return 0


def cmd_export(config: Config, args) -> int:
    from pathlib import Path

    from mailyard.store.transfer import Progress, export_mailbox

    output = Path(args.output) if args.output else None
    report = _transfer(config, lambda stores: export_mailbox(
        config, stores, args.user, args.format, output, label=args.label,
        progress=Progress("exporting")))
    for message_id in report.missing:
        print(f"mailyard: message {message_id}: its blobs are missing, not exported",
              file=sys.stderr)
    print(report.summary(args.user.strip().lower(), args.format), file=sys.stderr)
    return 1 if report.missing else 0


def cmd_schema_apply(config: Config, args) -> int:
    from mailyard.store.errors import StorageError
    from mailyard.store.metadata.cassandra import apply_schema

    try:
        for line in asyncio.run(apply_schema(config.cassandra)):
            print(line)
    except StorageError as exc:
        print(f"mailyard: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_authcheck(config: Config, args) -> int:
    import ipaddress

    from mailyard.mta.dns import DnsTempError, open_resolver
    from mailyard.mta.senderauth import authenticate

    try:
        ipaddress.ip_address(args.client_ip)
    except ValueError:
        raise UsageError(f"--client-ip {args.client_ip!r} is not an IP address") from None
    message = sys.stdin.buffer.read()
    try:
        resolver = open_resolver(config.dns, args.dns_zone)
    except Exception as exc:  # unreadable file, dnspython's zone syntax errors
        raise UsageError(f"cannot read the DNS zone: {exc}") from None
    try:
        verdict = asyncio.run(authenticate(config, resolver, message, client_ip=args.client_ip,
                                           helo=args.helo, mail_from=args.mail_from.strip("<>")))
    except DnsTempError as exc:
        raise UsageError(f"DNS: {exc}") from None
    sys.stdout.write(verdict.header.decode("utf-8", "replace").replace("\r\n", "\n"))
    if verdict.reply:
        print(f"# the MX would refuse this message: {verdict.reply}", file=sys.stderr)
    elif verdict.action != "accept":
        print(f"# the MX would deliver this message to SPAM ({verdict.action})", file=sys.stderr)
    return 0


def cmd_dkim_keygen(config: Config, args) -> None:
    import re

    from mailyard.mta.dkim_sign import default_selector, generate, zone_line

    domain = args.domain.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+", domain):
        raise UsageError(f"{args.domain!r} is not a domain name")
    algorithm = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[args.algorithm]
    selector = args.selector or default_selector(algorithm)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?", selector):
        raise UsageError(f"{selector!r} is not a selector (letters, digits, - and _)")
    try:
        key = generate(config.data_path, domain, selector, algorithm)
    except FileExistsError as exc:
        raise UsageError(f"{exc.filename} exists; pick another --selector") from None
    entry = to_toml({"domain": key.entry.domain, "selector": key.entry.selector,
                     "private_key_file": key.entry.private_key_file,
                     "algorithm": key.entry.algorithm})
    print(f"wrote {key.path} (mode 0600)\n\n"
          f"Publish this DNS TXT record:\n"
          f"  name:  {key.dns_name}\n"
          f"  value: {key.dns_value}\n"
          f"  zone:  {zone_line(key.dns_name, key.dns_value)}\n\n"
          f"Then add to the configuration and restart the submission, mailbox and gateway "
          f"services:\n[[dkim.keys]]\n{entry}", end="")


def cmd_queue(config: Config, args) -> int:
    from mailyard.mta.outbound.admin import command

    if args.action == "retry" and bool(args.ids) == args.all:
        raise UsageError("queue retry takes message ids or --all")
    ids = [args.id] if args.action == "show" else getattr(args, "ids", [])
    return command(config, args.action, ids, everything=getattr(args, "all", False))


def cmd_spam(config: Config, args) -> int:
    from mailyard.spam.admin import command

    return command(config, args.action, getattr(args, "entries", []))


def cmd_keys(config: Config, args) -> int:
    from mailyard.store.blobs import admin
    from mailyard.store.stores import Stores

    from mailyard.store.errors import StorageError

    async def run() -> None:
        stores = Stores(config)
        try:
            blobs = await stores.blobs()
            if args.action == "list":
                ring = admin.keyring(config)
                usage = await admin.key_usage(blobs)
                print(f"keys file: {ring.path}\ncurrent: {ring.current}")
                for name in sorted(usage, key=lambda n: (n == "plain", n)):
                    what = {"plain": "written before encryption", "0": "compressed only"}.get(
                        name, "in the keys file" if int(name) in ring.ids() else "MISSING")
                    print(f"key {name}: {usage[name]} blobs ({what})")
                return
            if args.action == "rotate":
                print(f"new current key: {admin.keyring(config).rotate()}", flush=True)
                if args.no_reseal:
                    return
            report = await admin.reseal_all(blobs, lambda r: print(
                f"  {r.scanned} blobs looked at, {r.resealed} re-sealed", flush=True))
            print(f"re-sealed {report.resealed} of {report.scanned} blobs "
                  f"in {report.seconds:.1f} s")
            for failure in report.failed[:20]:
                print(f"mailyard: not re-sealed: {failure}", file=sys.stderr)
            if report.failed:
                raise StorageError(f"{len(report.failed)} blobs could not be re-sealed; "
                                   f"run `mailyard keys reseal` again once that is fixed")
        finally:
            await stores.close()

    try:
        asyncio.run(run())
    except StorageError as exc:
        print(f"mailyard: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_gc_run(config: Config, args) -> None:
    from mailyard.store.gc.service import run_once
    from mailyard.store.stores import Stores

    async def work():
        stores = Stores(config)
        try:
            return await run_once(config, stores, dry_run=args.dry_run)
        finally:
            await stores.close()

    purged, report = asyncio.run(work())
    verb = "would purge" if args.dry_run else "purged"
    print(f"retention: {verb} {purged['TRASH']} from TRASH, {purged['SPAM']} from SPAM")
    verb = "would free" if args.dry_run else "freed"
    print(f"blobs: {report.scanned} scanned, {report.linked} linked, {verb} {report.freed_blobs}"
          f" ({report.freed_bytes} bytes), {report.busy} busy")


def cmd_tier_run(config: Config, args) -> int:
    from mailyard.store.stores import Stores
    from mailyard.store.tiering import Tierer

    if args.after_days is not None:
        config.tiering.after_days = args.after_days
    if not config.tiering.enabled:
        raise UsageError("tiering.enabled is false: there is no cold tier")

    async def run():
        stores = Stores(config)
        try:
            return await Tierer(config, await stores.metadata(), await stores.blobs()).run()
        finally:
            await stores.close()

    report = asyncio.run(run())
    print(f"{report.messages} messages older than {config.tiering.after_days:g} days: "
          f"moved {report.moved_blobs} blobs ({report.moved_bytes} bytes) to the cold tier, "
          f"{report.kept_hot} kept hot (shared with newer mail or in flight)")
    return 0


def cmd_status(config: Config, args) -> None:
    from mailyard.policy.status import collect, format_text

    report = collect(config)
    print(json.dumps(report, indent=2) if args.json else format_text(report).rstrip("\n"))


def cmd_check(config: None, args) -> int:
    checked, errors = config_module.check(args.config, args.data_dir)
    files = list(dict.fromkeys(e.file for e in errors))
    for error in sorted(errors, key=lambda e: (files.index(e.file), e.line or 0)):
        print(f"mailyard: {error}", file=sys.stderr)
    if errors:
        print(f"mailyard: {len(errors)} error{'s' if len(errors) > 1 else ''}", file=sys.stderr)
        return 78  # EX_CONFIG
    print(f"configuration OK ({len(checked.domains)} domain policies)")
    return 0


def cmd_reload(config: None, args) -> int:
    from mailyard.policy.reload import signal_running

    if cmd_check(None, args):
        print("mailyard: not reloaded; the running services keep their configuration",
              file=sys.stderr)
        return 78
    checked = config_module.load(args.config, args.data_dir)
    signalled = signal_running(checked.data_path)
    if not signalled:
        print(f"mailyard: no running mailyard found in {checked.data_dir}", file=sys.stderr)
        return 1
    print(f"reload signalled to pid {', '.join(map(str, signalled))}")
    return 0


def cmd_trace(config: Config, args) -> int:
    from mailyard.store.trace import format_trace, load_trace

    found = asyncio.run(_with_metadata(config, lambda m: load_trace(m, args.id)))
    if not found:
        print(f"mailyard: no message known as {args.id!r}", file=sys.stderr)
        return 1
    print(format_trace(found, as_json=args.json), end="")
    return 0


def cmd_config_show(config: Config, args) -> None:
    print(to_toml(config_module.to_dict(config)), end="")


def to_toml(values: dict) -> str:
    def scalar(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, dict):  # an inline table, as in an array of tables
            return "{" + ", ".join(f"{key(k)} = {scalar(v)}" for k, v in value.items()) + "}"
        # A TOML basic string: JSON's escapes (control characters included), DEL too.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")

    def key(name: str) -> str:  # bare keys are ASCII only
        bare = name.isascii() and name.replace("_", "").replace("-", "").isalnum()
        return name if bare else scalar(name)

    def table(name: str, entries: dict) -> list[str]:
        out = ["", f"[{name}]"] + [f"{key(k)} = {scalar(v)}" for k, v in entries.items()
                                   if not isinstance(v, dict)]
        for sub, inner in entries.items():  # nested tables, e.g. [dmarc.overrides]
            if isinstance(inner, dict):
                out += table(f"{name}.{key(sub)}", inner)
        return out

    lines = [f"{k} = {scalar(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for name, entries in values.items():
        if isinstance(entries, dict):
            lines += table(name, entries)
    return "\n".join(lines) + "\n"


COMMANDS = {
    ("up", None): cmd_up,
    ("run", None): cmd_run,
    ("user", "add"): cmd_user_add,
    ("user", "list"): cmd_user_list,
    ("domain", "add"): cmd_domain_add,
    ("domain", "list"): cmd_domain_list,
    ("token", "issue"): cmd_token_issue,
    ("config", "show"): cmd_config_show,
    ("check", None): cmd_check,
    ("reload", None): cmd_reload,
    ("trace", None): cmd_trace,
    ("search", "reindex"): cmd_search_reindex,
    ("import", "mbox"): cmd_import,
    ("import", "maildir"): cmd_import,
    ("export", None): cmd_export,
    ("schema", "apply"): cmd_schema_apply,
    ("authcheck", None): cmd_authcheck,
    ("status", None): cmd_status,
    ("dkim", "keygen"): cmd_dkim_keygen,
    **{("queue", action): cmd_queue
       for action in ("list", "show", "retry", "delete", "hold", "release")},
    **{("spam", action): cmd_spam for action in ("block", "unblock", "blocked")},
    **{("keys", action): cmd_keys for action in ("list", "rotate", "reseal")},
    ("tier", "run"): cmd_tier_run,
    ("gc", "run"): cmd_gc_run,
}
