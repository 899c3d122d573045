"""The spam stage of the delivery path: one assessment per message, one
verdict per recipient.

Rules and features are computed once per message; the classifier adds each
recipient's own points. Each recipient's copy gets X-Spam-Status and
X-Spam-Score among our trace headers (right below our Received line), by a
skeleton of its own whose first segment holds them: the part blobs stay
shared and the message below stays byte for byte as received. The verdict and
the features are stored (MetadataStore) so the user's feedback can train on
exactly what was scored.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailyard.policy.config import Config
from mailyard.proto import events_pb2
from mailyard.spam import features as feats
from mailyard.spam.blocklist import SenderBlocklist
from mailyard.spam.classifier import Classifier
from mailyard.spam.rules import Facts, evaluate, own_auth_results
from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.messages import StoredContent
from mailyard.store.metadata.base import MetadataStore, SpamVerdict


@dataclass(slots=True)
class Filed:
    """How one recipient's copy is stored."""
    skeleton_key: str          # with the X-Spam headers below our Received line
    skeleton: bytes            # its serialized bytes
    size: int
    verdict: SpamVerdict

    def blob_keys(self, stored: StoredContent) -> list[str]:
        """What the copy references: the shared parts and its own skeleton
        (the unstamped one is read by nobody, so collection may free it)."""
        return sorted({*stored.blob_keys, self.skeleton_key} - {stored.skeleton_key})

    def blob_sizes(self, stored: StoredContent) -> dict[str, int]:
        return {**stored.blob_sizes, self.skeleton_key: len(self.skeleton)}

    def restorer(self, blobs: BlobStore, store_again: Callable[[], Awaitable[object]]):
        """What writes this copy's blobs again when a collector took one
        meanwhile (gc/links.py): the message's, then this skeleton."""
        async def restore() -> None:
            await store_again()
            await blobs.put(self.skeleton)
        return restore


def status_header(verdict: SpamVerdict, required: float) -> bytes:
    tests = ",".join(verdict.tests) or "none"
    return (f"X-Spam-Status: {'Yes' if verdict.spam else 'No'}, score={verdict.score:.1f}"
            f" required={required:.1f}\r\n\ttests={tests}\r\n"
            f"X-Spam-Score: {verdict.score:.1f}\r\n").encode("ascii")


def first_field_end(literal: bytes) -> int:
    """Where the first header field (with its folded lines) ends, or 0."""
    at = 0
    while True:
        end = literal.find(b"\n", at)
        if end < 0 or end + 1 >= len(literal):
            return 0
        if literal[end + 1:end + 2] not in (b" ", b"\t"):
            return end + 1
        at = end + 1


def stamp(skeleton: events_pb2.Skeleton, header: bytes) -> events_pb2.Skeleton:
    """The skeleton with `header` right below the first field, our MX's
    Received line, so the message still starts with our trace and all below
    stays byte for byte; on top when the message starts otherwise."""
    stamped = events_pb2.Skeleton(size=skeleton.size + len(header))
    segments = list(skeleton.segments)
    first = segments[0].literal if segments and segments[0].WhichOneof("kind") == "literal" else b""
    cut = first_field_end(first) if first.startswith(b"Received:") else 0
    if cut:
        stamped.segments.add(literal=first[:cut] + header + first[cut:])
        segments = segments[1:]
    else:
        stamped.segments.add(literal=header)
    stamped.segments.extend(segments)
    return stamped


class SpamStage:
    def __init__(self, config: Config, metadata: MetadataStore, blobs: BlobStore, cache: Cache):
        self.config, self.metadata, self.blobs = config, metadata, blobs
        self.classifier = Classifier(config.spam, metadata)
        self.blocklist = SenderBlocklist(metadata, cache, config.spam.blocklist_refresh)

    async def assess(self, envelope: events_pb2.InboundEnvelope, raw: bytes,
                     stored: StoredContent) -> "Assessment":
        headers = feats.read_headers(raw)
        authserv = self.config.authentication.authserv_id or self.config.hostname
        own_auth = own_auth_results(headers, authserv)
        blocked = await self.blocklist.matches(envelope.mail_from, headers.from_)
        hits = evaluate(Facts(raw, headers, own_auth, blocked, list(envelope.dnsbl_listed)))
        names = await asyncio.to_thread(feats.tokens, headers, stored.summary, own_auth,
                                        self.config.spam.max_text_chars)
        features = feats.hashed(names)
        return Assessment(self, stored, hits, features,
                          await self.classifier.global_weights(features))


class Assessment:
    """One message's rule hits and features, filed per recipient."""

    def __init__(self, stage: SpamStage, stored: StoredContent, hits: list[tuple[str, float]],
                 features: list[int], global_weights: dict[int, float]):
        self.stage, self.stored, self.hits = stage, stored, hits
        self.features, self.global_weights = features, global_weights
        self._skeleton: events_pb2.Skeleton | None = None

    async def file(self, user_id: str, message_id: str) -> Filed:
        stage = self.stage
        # A replayed delivery keeps the first verdict, so the copy it may
        # have stored already and its training state stay as they are.
        verdict = await stage.metadata.get_spam_verdict(user_id, message_id)
        if verdict is None:
            verdict = await self._verdict(user_id, message_id)
            await stage.metadata.put_spam_verdict(verdict)
        header = status_header(verdict, stage.config.spam.required_score)
        stamped = stamp(await self._base_skeleton(), header)
        serialized = stamped.SerializeToString()
        key = await stage.blobs.put(serialized)
        return Filed(key, serialized, stamped.size, verdict)

    async def _verdict(self, user_id: str, message_id: str) -> SpamVerdict:
        classifier = self.stage.classifier
        probability = await classifier.probability(user_id, self.features, self.global_weights)
        learned = round(classifier.points(probability), 1)
        tests = [f"{name}={points:.1f}" for name, points in self.hits]
        if learned:
            tests.append(f"CLASSIFIER={learned:.1f}")
        score = round(sum(points for _, points in self.hits) + learned, 1)
        return SpamVerdict(user_id=user_id.lower(), message_id=message_id, score=score,
                           spam=score >= self.stage.config.spam.required_score, tests=tests,
                           features=self.features)

    async def _base_skeleton(self) -> events_pb2.Skeleton:
        if self._skeleton is None:
            self._skeleton = events_pb2.Skeleton.FromString(
                await self.stage.blobs.get(self.stored.skeleton_key))
        return self._skeleton
