"""Bulk indexing (searchd/bulk.py): worker-process extraction gives the same
documents as in-process; overlapped writes write everything, each batch only
after its terms were learnt; old zlib-packed index text still reads."""
from __future__ import annotations

import zlib
from email.message import EmailMessage

from mailyard.searchd.bulk import Extractor, write_overlapped
from mailyard.searchd.extract import document
from mailyard.searchd.index.fts5 import Fts5SearchIndex, _unpack
from mailyard.searchd.query import parse
from mailyard.store.metadata.base import MessageRecord

USER = "alice@example.test"


def item(n: int) -> tuple[MessageRecord, bytes]:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@remote.example", USER, f"Report number{n}"
    msg.set_content(f"Quarterly figures, batch word{n // 10} and Ünïcode café {n}")
    if n % 3 == 0:
        msg.add_attachment(f"notes of item{n}", filename=f"notes{n}.txt")
    raw = msg.as_bytes()
    record = MessageRecord(user_id=USER, message_id=f"m{n:04d}", thread_id="",
                           received_at_ms=1_700_000_000_000 + n * 1000, skeleton_key="",
                           size=len(raw), labels={"INBOX"}, has_attachments=n % 3 == 0)
    return record, raw


async def test_worker_processes_extract_what_document_does():
    items = [item(n) for n in range(25)]
    with Extractor(processes=2) as extractor:
        docs = await extractor.documents(items)
    assert [d.message_id for d in docs] == [r.message_id for r, _ in items]
    assert [d.text for d in docs] == [document(r, raw).text for r, raw in items]
    assert await Extractor(processes=0).documents(items[:3]) == docs[:3]


async def test_overlapped_writes_learn_each_batch_before_writing_it(tmp_path):
    index = Fts5SearchIndex(tmp_path / "search.db")
    await index.start()
    items = [item(n) for n in range(60)]
    learnt: list[str] = []

    async def item_batches():
        for first in range(0, len(items), 20):
            yield items[first:first + 20]

    async def learn(batch) -> None:
        # Nothing of this batch may be searchable before its terms are learnt.
        for doc in batch.documents:
            word = doc.text["body"].split()[3]  # the batch word
            assert word in batch.terms
            assert not (await index.search(USER, parse(word), 50)).hits
        learnt.extend(doc.message_id for doc in batch.documents)

    try:
        with Extractor(processes=1) as extractor:
            written = await write_overlapped(index, extractor.stream(item_batches()), learn)
            assert written == 60
        assert learnt == [r.message_id for r, _ in items]
        assert await index.count(USER) == 60
        hits = (await index.search(USER, parse("filename:notes30"), 50)).hits
        assert [h.message_id for h in hits] == ["m0030"]
        assert len((await index.search(USER, parse("cafe"), 100)).hits) == 60
    finally:
        await index.close()


def test_index_text_written_with_zlib_still_unpacks():
    assert _unpack(zlib.compress("subject\x00body text".encode(), 1)) == ["subject", "body text"]


async def test_a_rebuild_defers_merges_then_leaves_one_segment(tmp_path):
    index = Fts5SearchIndex(tmp_path / "search.db")
    await index.start()

    def config(db) -> dict:
        return dict(db.execute("SELECT k, v FROM fts_config").fetchall())

    def segments(db) -> int:
        return db.execute("SELECT count(DISTINCT segid) FROM fts_idx").fetchone()[0]

    try:
        async with index.rebuilding():
            assert config(index._wdb)["automerge"] == 0
            with Extractor() as extractor:
                for first in range(0, 40, 5):  # a segment per write
                    await index.write(await extractor.documents([item(n) for n in
                                                                 range(first, first + 5)]))
            assert len((await index.search(USER, parse("cafe"), 100)).hits) == 40
            assert segments(index._wdb) >= 8  # none merged
        assert config(index._wdb)["automerge"] == 4
        assert segments(index._wdb) == 1  # optimized
        assert len((await index.search(USER, parse("cafe"), 100)).hits) == 40
    finally:
        await index.close()
