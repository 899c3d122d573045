"""The spam stage's parts on the embedded stores: Bloom filter, blocklist,
rules, the classifier's scopes and persistence, and replayed deliveries."""
from __future__ import annotations

import pytest

from mailyard.policy.config import Config, SpamConfig
from mailyard.proto import events_pb2
from mailyard.spam import features as feats
from mailyard.spam.blocklist import FILTER_KEY, SenderBlocklist, candidates
from mailyard.spam.bloom import BloomFilter
from mailyard.spam.classifier import Classifier
from mailyard.spam.rules import Facts, evaluate, own_auth_results
from mailyard.spam.stage import SpamStage
from mailyard.store.blobs.fs import FsBlobStore
from mailyard.store.cache.memory import MemoryCache
from mailyard.store.messages import store_content
from mailyard.store.metadata.sqlite import SqliteMetadataStore
from mailyard.store.raw import load_raw
from tests.spam_corpus import corpus


class CountingStore(SqliteMetadataStore):
    """The real SQLite store, counting its exact blocklist lookups."""
    lookups = 0

    async def blocked_senders(self, candidates):
        self.lookups += 1
        return await super().blocked_senders(candidates)


@pytest.fixture
async def metadata(tmp_path):
    store = CountingStore(tmp_path / "metadata.db")
    await store.start()
    yield store
    await store.close()


def test_bloom_filter_never_forgets_and_rarely_lies():
    bloom = BloomFilter(2000)
    members = [f"user{i}@member.example" for i in range(2000)]
    for member in members:
        bloom.add(member)
    copy = BloomFilter.from_bytes(bloom.to_bytes())
    assert all(m in copy for m in members)
    false = sum(f"other{i}@stranger.example" in copy for i in range(10_000))
    assert false < 300  # about 1% at capacity
    assert BloomFilter.from_bytes(b"garbage") is None
    assert BloomFilter.from_bytes(bloom.to_bytes()[:-1]) is None


def test_blocklist_candidates_cover_address_domain_and_parents():
    assert candidates("Bob@Mail.Spam.Example", "Boss <boss@corp.example>") == [
        "bob@mail.spam.example", "mail.spam.example", "spam.example",
        "boss@corp.example", "corp.example"]  # never a whole top-level domain
    assert candidates("", "no address") == []


async def test_blocklist_asks_the_store_only_when_the_filter_says_maybe(metadata):
    cache = MemoryCache()
    blocklist = SenderBlocklist(metadata, cache, refresh=30.0)
    assert await blocklist.block("spam.example")
    for i in range(200):
        assert await blocklist.matches(f"user{i}@fine{i}.example", "") == []
    assert metadata.lookups <= 5  # false positives of a 1% filter, not 200 lookups
    assert await blocklist.matches("x@mail.spam.example", "") == ["spam.example"]
    assert await cache.get(FILTER_KEY)  # the filter is shared through the Cache port

    # Another process blocks an address: its invalidation reaches us through
    # the shared cache once our local copy is older than `refresh`.
    other = SenderBlocklist(metadata, cache, refresh=30.0)
    assert await other.block("Late@Corp.Example")
    blocklist.refresh = 0.0
    assert await blocklist.matches("", "Late <late@corp.example>") == ["late@corp.example"]
    assert await other.unblock("spam.example")
    assert await blocklist.matches("x@spam.example", "") == []


def facts(raw: bytes, blocked=(), dnsbl=()) -> Facts:
    headers = feats.read_headers(raw)
    return Facts(raw, headers, own_auth_results(headers, "mx.mailyard.test"), list(blocked),
                 list(dnsbl))


def test_rules_trust_only_our_authentication_results():
    base = (b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@x.example>\r\n"
            b"From: a@x.example\r\nSubject: hello\r\n\r\nbody\r\n")
    ours = b"Authentication-Results: mx.mailyard.test;\r\n\tspf=fail smtp.mailfrom=x.example;" \
           b"\r\n\tdkim=none;\r\n\tdmarc=fail (p=none dis=none) header.from=x.example\r\n"
    theirs = b"Authentication-Results: relay.example; spf=fail; dmarc=fail\r\n"
    assert evaluate(facts(base)) == []
    assert evaluate(facts(theirs + base)) == []
    assert evaluate(facts(ours + theirs + base)) == [("SPF_FAIL", 2.0), ("DMARC_FAIL", 3.0)]
    assert evaluate(facts(base, ["x.example"])) == [("BLOCKED_SENDER", 100.0)]
    assert evaluate(facts(base, dnsbl=["score.test"])) == [("DNSBL_LISTED", 3.0)]


def features_of(raw: bytes) -> list[int]:
    from mailyard.store.mime import summarize
    return feats.hashed(feats.tokens(feats.read_headers(raw), summarize(raw), None, 20_000))


@pytest.mark.parametrize("learn_global", [False, True])
async def test_training_one_user_moves_another_only_through_global_weights(
        metadata, learn_global):
    classifier = Classifier(SpamConfig(learn_global=learn_global), metadata)
    training = [(spam, features_of(raw)) for spam, raw in corpus(3, 60, "a@x")]
    probe = features_of(corpus(4, 2, "a@x")[0][1])
    before = await classifier.probability("b@x", probe)
    for spam, features in training:
        await classifier.learn("a@x", features, spam)
    assert await classifier.probability("a@x", probe) != before
    moved = await classifier.probability("b@x", probe) != before
    assert moved == learn_global


async def test_weights_survive_a_restart(tmp_path):
    first = SqliteMetadataStore(tmp_path / "m.db")
    await first.start()
    features = features_of(corpus(5, 1, "a@x")[0][1])
    await Classifier(SpamConfig(), first).learn("a@x", features, True)
    learned = await Classifier(SpamConfig(), first).probability("a@x", features)
    await first.close()
    again = SqliteMetadataStore(tmp_path / "m.db")
    await again.start()
    assert await Classifier(SpamConfig(), again).probability("a@x", features) == learned > 0.9
    await again.close()


async def test_a_replayed_delivery_keeps_its_first_verdict_and_copy(metadata, tmp_path):
    blobs = FsBlobStore(tmp_path / "blobs")
    await blobs.start()
    config = Config()
    stage = SpamStage(config, metadata, blobs, MemoryCache())
    raw = (b"Received: from client (client [127.0.0.1])\r\n\tby mx; Sat, 28 Nov 2026\r\n"
           b"From: a@x.example\r\nSubject: hi\r\n\r\nhello\r\n")
    stored = await store_content(blobs, raw, config.delivery.min_part_size)
    envelope = events_pb2.InboundEnvelope(mail_from="a@x.example", rcpt_to=["b@y"])
    first = await (await stage.assess(envelope, raw, stored)).file("b@y", "m1")
    # Training in between changes what a fresh verdict would say...
    await stage.classifier.learn("b@y", first.verdict.features, True)
    replay = await (await stage.assess(envelope, raw, stored)).file("b@y", "m1")
    # ...but the replay files the same copy.
    assert replay.skeleton_key == first.skeleton_key and replay.verdict == first.verdict
    copy = await load_raw(blobs, first.skeleton_key)
    assert copy.startswith(b"Received: from client (client [127.0.0.1])\r\n\tby mx; Sat")
    assert b"\r\nX-Spam-Status: No, score=1.5 required=5.0\r\n" in copy
    assert copy.endswith(raw[raw.index(b"From: "):]) and len(copy) == first.size
