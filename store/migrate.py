"""Schema migrations from Python: the dev stack and the tests bring a database to head here."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from config import PROJECT_ROOT


def alembic_config(database_url: str) -> Config:
    """An Alembic Config for `database_url`, independent of the current directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
