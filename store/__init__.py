"""The system of record: SQLAlchemy 2.0 models, the engine/session factory, read queries.

Lifecycle rows (opportunities, checkpoints, consents, signature requests) are written
only by activities; the API writes reference data (customers, needs, interactions,
employees, API keys) and reads everything.
"""
