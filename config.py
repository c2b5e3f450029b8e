"""needflow's one settings object, read from the environment (pydantic-settings).

Every process (API, worker, dev stack, starter) reads its configuration here and
nowhere else. Names and defaults are the ones README.md documents.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEEDFLOW_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "NEEDFLOW_DATABASE_URL")
    )
    temporal_address: str | None = None  # unset: the dev stack starts its own dev server
    temporal_port: int = 7233
    ui_port: int = 8233
    api_port: int = 8000
    api_host: str = "127.0.0.1"
    namespace: str = "default"
    # False only for a Temporal server that cannot register needflow's custom search
    # attributes (Temporal's time-skipping test server): workflows then carry none.
    search_attributes: bool = True
    dev_api_key: str | None = None
    # Where the API is reachable from a customer's browser (signing links).
    public_base_url: str | None = None
    processes_dir: Path = PROJECT_ROOT / "processes"
    routing_rules: Path = PROJECT_ROOT / "rules" / "routing.yaml"
    # Referral SLAs, in seconds (durable workflow timers; a running referral keeps its own).
    referral_accept_sla: float = Field(default=3600, gt=0)
    referral_followup_sla: float = Field(default=86400, gt=0)
    #: Referrer scores count the referrals decided within this many days.
    referrer_window_days: int = Field(default=90, gt=0)
    # E-mail: smtp://[user:password@]host[:port]; unset, messages stay in the outbox table.
    smtp_url: str | None = None
    mail_from: str = "needflow@localhost"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'needflow.db').resolve()}"

    @property
    def dev_api_key_file(self) -> Path:
        """Where the dev stack keeps the key it generates (unless NEEDFLOW_DEV_API_KEY is
        set) and where the command-line client looks for it: one path for both."""
        return self.data_dir / "dev-api-key"

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def resolved_public_base_url(self) -> str:
        return (self.public_base_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
