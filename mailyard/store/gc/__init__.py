"""Garbage collection of blobs no owner links any more, and mail retention.

Blobs are content-addressed and shared, so a blob is deleted only once no
link record `(blob, owner)` names it. The danger is a writer that reuses an
existing blob while the collector deletes it: its `put` saw the blob and
wrote nothing, its link came after the collector's last look at the links.
Two halves close that window, each through the ports only (MetadataStore
links and deletion records, BlobStore put/exists/delete), so they hold on
every adapter and under any layer that transforms or tiers the stored bytes.

The collector (collector.py), for a blob K it found without owners:
  C1. claims K: a deletion record (K, pending, t) created only if K has no
      record (atomic: an SQLite transaction, a Cassandra LWT);
  C2. reads K's owners again; if there are any it drops the claim, done;
  C3. deletes the blob, unless the claim is older than half the lease
      (a stalled collector gives up rather than delete late);
  C4. turns the claim into a tombstone (K, done, t'), kept for `grace`.

A writer (links.py: put the blobs, then `link_and_secure`):
  W1. puts its blobs (maybe finding K there and writing nothing);
  W2. links them to its owner;
  W3. reads the deletion records of its keys; waits while one is pending;
  W4. if a record exists, or W1..W3 took longer than grace/2, checks its
      blobs exist and writes the missing ones again, before anything that
      makes the owner visible (put_message, the queue publish).

Why no linked blob is lost. Take a deletion of K (C3) and a writer of K.
If W2 came before C2, the collector saw the link and did not delete. If W2
came after C2, then W3 came after C1, so at W3 the record of K exists: still
pending (the writer waits for C4, then restores K in W4, and no later
collector can delete K because its C2 sees the link) or a tombstone, which
outlives C4 by `grace` > any writer's W1..W3 (a slower writer checks
anyway). Either way W4 puts K back after the deletion. A collector that died
between C1 and C4 leaves a pending claim; after `claim_lease` it is taken
over (by the next collector run or a waiting writer) as a tombstone.

What is assumed: a collector does not stall for more than lease/2 between
its check in C3 and the delete reaching the store (a lease's usual bound),
and clocks agree within a small fraction of `grace` and `claim_lease`.

Owners: `user/message_id` for a stored message (charged to the user's quota),
`spool/queue_id` for a raw message waiting for delivery, `outbound/queue_id`
for one waiting for remote delivery (dropped with its outbound entry), and
`delta/<key>` for the base of a delta blob (store/delta.py), dropped when
the collector deletes that delta blob.
"""
