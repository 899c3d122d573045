"""Splitting messages into their blobs in worker processes.

Reading a message (the MIME walk and header parsing of `store_content`)
is most of an import's CPU time, so it runs in a pool of processes, each
with its own blob store from the configuration, and the importer's process
keeps the metadata writes, threading and index events. Workers start by
spawn, not fork: the parent already has SQLite and executor threads.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import wait
from multiprocessing.util import Finalize

from mailyard.policy.config import Config
from mailyard.store.messages import StoredContent, store_content

_worker: dict = {}


def pool(config: Config, processes: int | None = None) -> ProcessPoolExecutor:
    """Two processes per core: while one waits on its blob fsyncs another parses."""
    processes = processes or 2 * (os.cpu_count() or 1)
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start, initargs=(config,))


def _start(config: Config) -> None:
    from mailyard.store.stores import Stores

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importer's to handle
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stores = Stores(config)
    _worker.update(loop=loop, blobs=loop.run_until_complete(stores.blobs()),
                   min_part_size=config.delivery.min_part_size)
    Finalize(stores, lambda: loop.run_until_complete(stores.close()), exitpriority=10)


def _exit_with_parent() -> None:
    """A killed importer (kill -9, OOM) must not leave its workers behind."""
    wait([multiprocessing.parent_process().sentinel])
    os._exit(1)


def store(raw: bytes) -> StoredContent:
    """`store_content` in a worker. The bodies are dropped from the summary:
    the record needs only the snippet, and they would be copied back."""
    stored = _worker["loop"].run_until_complete(
        store_content(_worker["blobs"], raw, _worker["min_part_size"]))
    stored.summary.text_body = stored.summary.html_body = None
    return stored
