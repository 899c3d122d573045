"""Independent DKIM verifiers for tests of what mailyard signs, keys from a BIND zone file.

- Mail::DKIM (Debian `libmail-dkim-perl`), its DNS answered from the zone
  file as Perl's Net::DNS::ZoneFile reads it: no code of ours on that path.
  This Mail::DKIM has no ed25519-sha256 (it reports such signatures invalid).
- opendkim in test mode (`opendkim -t`, Debian `opendkim`), the zone file's
  DKIM TXT records given as its TestPublicKeys; it checks both algorithms.

tests/run installs both; a test that needs one skips without it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

MAIL_DKIM_VERIFIER = r'''
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS; use Net::DNS::ZoneFile;

package ZoneResolver;   # what Mail::DKIM::DNS asks of a Net::DNS::Resolver
sub new {
    my ($class, $file) = @_;
    my @records = Net::DNS::ZoneFile->new($file)->read;
    return bless {records => \@records}, $class;
}
sub send {
    my ($self, $name, $type) = @_;
    my $packet = Net::DNS::Packet->new($name, $type);
    my @found = grep { lc($_->owner) eq lc($name) && $_->type eq uc($type) } @{$self->{records}};
    $packet->push(answer => @found);
    $packet->header->rcode(@found ? 'NOERROR' : 'NXDOMAIN');
    return $packet;
}
sub errorstring { 'NOERROR' }

package main;
Mail::DKIM::DNS::resolver(ZoneResolver->new($ARGV[0]));
my $dkim = Mail::DKIM::Verifier->new;
binmode STDIN;
while (<STDIN>) { s/\015?\012/\015\012/; $dkim->PRINT($_); }
$dkim->CLOSE;
foreach my $signature ($dkim->signatures) {
    print join(" ", $signature->result, $signature->domain, $signature->algorithm), "\n";
}
'''


def need(tool: str) -> None:
    if tool == "Mail::DKIM":
        missing = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS::ZoneFile",
                                  "-e", "1"], capture_output=True).returncode != 0
    else:
        missing = shutil.which(tool) is None
    if missing:
        pytest.skip(f"{tool} is not installed (tests/run installs it)")


def mail_dkim(message: bytes, zone_file: Path) -> list[tuple[str, str, str]]:
    """(result, domain, algorithm) per DKIM-Signature, by Mail::DKIM."""
    need("Mail::DKIM")
    done = subprocess.run(["perl", "-e", MAIL_DKIM_VERIFIER, str(zone_file)], input=message,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return [tuple(line.split(" ", 2)) for line in done.stdout.decode().splitlines()]


def zone_dkim_keys(zone_file: Path) -> dict[str, str]:
    """selector._domainkey.domain -> the key record, from the zone file."""
    zone = dns.zone.from_text("$TTL 300\n" + zone_file.read_text(), origin=dns.name.root,
                              relativize=False, check_origin=False)
    keys = {}
    for name, rdataset in zone.iterate_rdatasets(dns.rdatatype.TXT):
        owner = name.to_text().rstrip(".")
        if "._domainkey." in owner:
            for record in rdataset:
                keys[owner] = b"".join(record.strings).decode()
    return keys


def opendkim(message: bytes, zone_file: Path, workdir: Path) -> list[str]:
    """opendkim's `dkim=` results (pass, fail, ...), one per signature."""
    need("opendkim")
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys.txt"
    keys.write_text("".join(f"{n} {v}\n" for n, v in zone_dkim_keys(zone_file).items()))
    conf = workdir / "opendkim.conf"
    conf.write_text(f"Syslog no\nMode v\nTestPublicKeys {keys}\n")
    eml = workdir / "message.eml"
    eml.write_bytes(message)
    done = subprocess.run(["opendkim", "-x", str(conf), "-t", str(eml), "-vv"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    return [part.split(None, 1)[0].rstrip(";") for part in out.split("dkim=")[1:]]
