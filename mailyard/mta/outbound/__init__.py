"""Outbound delivery: from the mail.outbound log to other servers.

    mail.outbound -> worker.py (window.py: many records in flight, commits in order)
                       -> lanes.py (one lane per destination: shared connections, limits)
                       -> routing.py (MX, A/AAAA, null MX) and client.py (SMTP, STARTTLS)
                       -> deferred: the entry first (compare-and-set), then a record on
                          a delay tier mail.outbound.delay.<N>s (schedule.py)
                       -> failed or expired: a DSN to the sender's INBOX (dsn.py)
    tiers.py: each tier's consumer puts records back on mail.outbound when due

The MetadataStore's OutboundEntry is each message's state; a queue record acts
only while its generation is the entry's (see store/outbox.py). service.py
starts the worker and the tiers; admin.py backs `mailyard queue`.
"""
