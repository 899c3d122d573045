"""The REST/JSON gateway: HTTP routes over the same MailboxService methods
the gRPC server runs (no second implementation), with /openapi.json,
/healthz and /metrics on the same port."""
