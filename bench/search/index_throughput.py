"""How fast the indexer extracts text, and its bulk writes go into each SearchIndex adapter.

    python bench/search/index_throughput.py --messages 20000 [--opensearch URL]

Extracts the generated corpus (corpus.py) once, timing the extraction in CPU
seconds of this process (steadier than wall time on a shared machine), then times only
SearchIndex.write in batches of search.batch_size documents spread over
--users users, as the indexer writes them: FTS5 in a temporary directory,
and OpenSearch (a fresh index prefix, deleted after) once per refresh mode.
Prints messages per second for each.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import Generator  # noqa: E402

from mailyard.policy.config import OpenSearchConfig, SearchConfig  # noqa: E402
from mailyard.searchd.extract import document  # noqa: E402
from mailyard.searchd.index.base import SearchDocument, SearchIndex  # noqa: E402
from mailyard.store.metadata.base import MessageRecord  # noqa: E402


def documents(messages, users: int) -> list[SearchDocument]:
    docs = []
    for n, message in enumerate(messages):
        record = MessageRecord(user_id=f"user{n % users}@bench.test", message_id=f"m{n:08d}",
                               thread_id="", received_at_ms=message.received_at_ms,
                               skeleton_key="", size=len(message.raw), labels={"INBOX", "UNREAD"})
        docs.append(document(record, message.raw))
    return docs


async def rate(index: SearchIndex, docs: list[SearchDocument], batch: int) -> float:
    await index.start()
    try:
        started = time.perf_counter()
        for i in range(0, len(docs), batch):
            await index.write(docs[i:i + batch])
        return len(docs) / (time.perf_counter() - started)
    finally:
        await index.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--batch", type=int, default=SearchConfig().batch_size)
    parser.add_argument("--opensearch", default="", help="http://host:port; omitted: FTS5 only")
    args = parser.parse_args()
    print(f"extracting {args.messages} messages ...", flush=True)
    messages = list(Generator().messages(args.messages))
    started = time.process_time()
    docs = documents(messages, args.users)
    print(f"extraction             {len(docs) / (time.process_time() - started):8.0f} messages"
          " per CPU second", flush=True)

    from mailyard.searchd.index.fts5 import Fts5SearchIndex
    with tempfile.TemporaryDirectory() as tmp:
        fts5 = await rate(Fts5SearchIndex(Path(tmp) / "search.db"), docs, args.batch)
    print(f"fts5                   {fts5:8.0f} messages/s", flush=True)
    if not args.opensearch:
        return

    from mailyard.searchd.index.opensearch import OpenSearchIndex
    for refresh in ("wait_for", "true"):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        config = OpenSearchConfig(hosts=[args.opensearch], index_prefix=prefix, replicas=0,
                                  refresh=refresh)
        speed = await rate(OpenSearchIndex(config), docs, args.batch)
        print(f"opensearch refresh={refresh:8} {speed:8.0f} messages/s", flush=True)
        request = urllib.request.Request(f"{args.opensearch}/{prefix}-messages-*",
                                         method="DELETE")
        urllib.request.urlopen(request, timeout=30).read()


if __name__ == "__main__":
    asyncio.run(main())
