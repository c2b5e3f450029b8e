"""The HTTP API of spec/API.md (FastAPI): authentication, the error shape, idempotency,
and routers by resource. It talks to workflows only through the Temporal client and
reads the system of record for answers."""
