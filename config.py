"""needflow's one settings object, read from the environment (pydantic-settings).

Every process (API, worker, dev stack, starter) reads its configuration here and
nowhere else. Names and defaults are the ones README.md documents.
"""

from __future__ import annotations

import re
import uuid
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from workflows.codec import KeyRing

PROJECT_ROOT = Path(__file__).resolve().parent


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")


def _guid(value: str, variable: str, what: str) -> str:
    value = value.strip()
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError(f"{variable} must be {what} (a GUID such as 2f1c9c1e-…), got {value!r}") from None
    return value


class DocuSignSettings(BaseSettings):
    """DocuSign, read from the `DOCUSIGN_*` variables (spec/API.md, "v1.1 additions").

    Loaded and checked when `NEEDFLOW_ESIGN_PROVIDER=docusign` (see `Settings`); every error
    names the variable. Built from code (tests), pass the values by field name through a
    subclass whose sources are the init arguments only (as tests/conftest.py does for
    `Settings`): like every BaseSettings, this class also reads the environment.
    """

    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True, validate_by_alias=True)

    #: The app's integration key (client id) from Apps and Keys.
    integration_key: str = Field(validation_alias="DOCUSIGN_INTEGRATION_KEY")
    #: The user the app acts as (JWT `sub`): a user id GUID, who has granted consent.
    user_id: str = Field(validation_alias="DOCUSIGN_USER_ID")
    #: PEM file of the app's RSA private key (the JWT assertion is signed with it, RS256).
    private_key_file: Path = Field(validation_alias="DOCUSIGN_PRIVATE_KEY_FILE")
    #: The account envelopes are sent from; unset: the user's default account.
    account_id: str | None = Field(default=None, validation_alias="DOCUSIGN_ACCOUNT_ID")
    #: The OAuth host, no scheme: account-d.docusign.com (developer sandbox) or
    #: account.docusign.com (production). Required: the SDK's defaults disagree.
    oauth_host: str = Field(validation_alias="DOCUSIGN_OAUTH_HOST")
    #: The account's base URI (https://demo.docusign.net), overriding the one user info
    #: gives; `/restapi` is appended unless present.
    base_url: str | None = Field(default=None, validation_alias="DOCUSIGN_BASE_URL")
    #: PEM bundle the DocuSign client trusts instead of the default (certifi) roots.
    ca_bundle: Path | None = Field(default=None, validation_alias="DOCUSIGN_CA_BUNDLE")
    #: Connect HMAC keys, comma-separated: a message is genuine when any of them signed it.
    connect_hmac_secrets: Annotated[list[str], NoDecode] = Field(validation_alias="DOCUSIGN_CONNECT_HMAC_SECRETS")

    @field_validator("integration_key")
    @classmethod
    def _integration_key(cls, v: str) -> str:
        return _guid(v, "DOCUSIGN_INTEGRATION_KEY", "the app's integration key")

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, v: str) -> str:
        return _guid(v, "DOCUSIGN_USER_ID", "the user id the app impersonates")

    @field_validator("account_id", mode="before")
    @classmethod
    def _account_id(cls, v: str | None) -> str | None:
        if v is None or not str(v).strip():
            return None
        return _guid(str(v), "DOCUSIGN_ACCOUNT_ID", "an account id")

    @field_validator("private_key_file")
    @classmethod
    def _private_key_file(cls, v: Path) -> Path:
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            data = v.read_bytes()
        except OSError as e:
            raise ValueError(f"DOCUSIGN_PRIVATE_KEY_FILE {str(v)!r} cannot be read: {e.strerror}") from None
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ValueError(f"DOCUSIGN_PRIVATE_KEY_FILE {str(v)!r} is not an unencrypted PEM private key") from None
        if not isinstance(key, RSAPrivateKey):
            raise ValueError(f"DOCUSIGN_PRIVATE_KEY_FILE {str(v)!r} holds no RSA key (DocuSign's JWT grant is RS256)")
        return v

    @field_validator("oauth_host")
    @classmethod
    def _oauth_host(cls, v: str) -> str:
        v = v.strip()
        if not _HOST.match(v):
            raise ValueError(
                f"DOCUSIGN_OAUTH_HOST must be a host name such as account-d.docusign.com "
                f"(no https://, no path), got {v!r}"
            )
        return v

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is None or not str(v).strip():
            return None
        v = str(v).strip().rstrip("/")
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"DOCUSIGN_BASE_URL must be an https:// URL such as https://demo.docusign.net, got {v!r}")
        return v

    @field_validator("ca_bundle", mode="before")
    @classmethod
    def _ca_bundle(cls, v: str | Path | None) -> Path | None:
        if v is None or not str(v).strip():
            return None
        path = Path(v)
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise ValueError(f"DOCUSIGN_CA_BUNDLE {str(path)!r} cannot be read: {e.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ValueError(f"DOCUSIGN_CA_BUNDLE {str(path)!r} holds no PEM certificate")
        return path

    @field_validator("connect_hmac_secrets", mode="before")
    @classmethod
    def _secrets(cls, v: str | list[str]) -> list[str]:
        items = v.split(",") if isinstance(v, str) else list(v)
        secrets = [s.strip() for s in items if s and s.strip()]
        if not secrets:
            raise ValueError("DOCUSIGN_CONNECT_HMAC_SECRETS must hold at least one Connect HMAC key")
        return secrets

    @property
    def rest_base(self) -> str | None:
        """DOCUSIGN_BASE_URL as the SDK's host (…/restapi), or None: from user info."""
        if self.base_url is None:
            return None
        return self.base_url if self.base_url.endswith("/restapi") else f"{self.base_url}/restapi"

    @classmethod
    def load(cls) -> DocuSignSettings:
        """From the environment; a ValueError naming every variable that is missing or wrong."""
        try:
            return cls()
        except ValidationError as e:
            problems = []
            for err in e.errors():
                variable = str(err["loc"][0]) if err["loc"] else "DOCUSIGN_*"
                if err["type"] == "missing":
                    problems.append(f"{variable} is not set")
                else:
                    problems.append(str(err["msg"]).removeprefix("Value error, "))
            raise ValueError(
                "NEEDFLOW_ESIGN_PROVIDER=docusign, but DocuSign is not configured: " + "; ".join(problems)
            ) from None


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
    #: Seconds a signing link of needflow's own page works (a week by default).
    signing_link_ttl: float = Field(default=604800, gt=0)
    #: Seconds between two looks at a DocuSign envelope still out for signature, in case
    #: its Connect message is lost (DocuSign allows one poll every 15 minutes).
    esign_poll_seconds: float = Field(default=900, gt=0)
    processes_dir: Path = PROJECT_ROOT / "processes"
    routing_rules: Path = PROJECT_ROOT / "rules" / "routing.yaml"
    # Referral SLAs, in seconds (durable workflow timers; a running referral keeps its own).
    referral_accept_sla: float = Field(default=3600, gt=0)
    referral_followup_sla: float = Field(default=86400, gt=0)
    #: Referrer scores count the referrals decided within this many days.
    referrer_window_days: int = Field(default=90, gt=0)
    #: When (HH:MM, UTC) the daily review schedule runs (`workflows/schedules.py`).
    daily_review_at: str = Field(default="06:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    # E-mail: smtp://[user:password@]host[:port]; unset, messages stay in the outbox table.
    smtp_url: str | None = None
    mail_from: str = "needflow@localhost"
    # E-signature: needflow's own signing page, or DocuSign (configured by DOCUSIGN_*).
    esign_provider: Literal["local", "docusign"] = "local"
    #: Read from DOCUSIGN_* when esign_provider is docusign (unless given); else None.
    docusign: DocuSignSettings | None = None
    #: The keys that encrypt workflow payloads (workflows/codec.py): "KEY_ID:BASE64_KEY,…",
    #: the first encrypts, every one decrypts. Unset, no worker or API connects to Temporal
    #: (`workflows.client.connect`); the dev stack makes one in <data dir>/codec-keys.
    codec_keys: SecretStr | None = None
    #: Browser origins (the Temporal Web UI) allowed to call /codec; unset: the dev UI's,
    #: http://127.0.0.1:<ui_port> and http://localhost:<ui_port>.
    codec_cors_origins: Annotated[list[str], NoDecode] = []

    @field_validator("codec_keys", mode="before")
    @classmethod
    def _codec_keys(cls, v: str | SecretStr | None) -> SecretStr | None:
        # Parsed by codec_keyring(), not here: a validation error would print the keys.
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        return SecretStr(str(text).strip()) if text is not None and str(text).strip() else None

    @field_validator("codec_cors_origins", mode="before")
    @classmethod
    def _codec_cors_origins(cls, v: str | list[str] | None) -> list[str]:
        items = v.split(",") if isinstance(v, str) else list(v or [])
        origins = []
        for item in (i.strip().rstrip("/") for i in items):
            if not item:
                continue
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise ValueError(
                    f"NEEDFLOW_CODEC_CORS_ORIGINS must list origins such as https://temporal.bank.example "
                    f"(scheme, host and port only), got {item!r}"
                )
            origins.append(item)
        return origins

    @model_validator(mode="after")
    def _docusign_configured(self) -> Settings:
        if self.esign_provider == "docusign":
            if self.docusign is None:
                self.docusign = DocuSignSettings.load()
            if not self.public_base_url:
                raise ValueError(
                    "NEEDFLOW_ESIGN_PROVIDER=docusign needs NEEDFLOW_PUBLIC_BASE_URL: DocuSign sends its "
                    "Connect messages to NEEDFLOW_PUBLIC_BASE_URL + /v1/webhooks/docusign"
                )
        return self

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
    def dev_codec_keys_file(self) -> Path:
        """Where the dev stack keeps the payload encryption key it makes (unless
        NEEDFLOW_CODEC_KEYS is set), beside the dev server's histories it encrypts."""
        return self.data_dir / "codec-keys"

    @property
    def resolved_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def resolved_public_base_url(self) -> str:
        return (self.public_base_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    def codec_keyring(self) -> KeyRing:
        """NEEDFLOW_CODEC_KEYS as a key ring; a ValueError (never showing a key) saying what is
        wrong with it, or how to set it when unset."""
        from workflows.codec import KeyRing

        if self.codec_keys is None:
            raise ValueError(
                "NEEDFLOW_CODEC_KEYS is not set: workflow payloads hold customer data and are only ever written "
                "encrypted. Set it to KEY_ID:BASE64_KEY[,KEY_ID:BASE64_KEY…] (the first encrypts; make a key with "
                "`python -m workflows.codec KEY_ID`), the same in every worker and API process. "
                "`make run` makes a dev key in <data dir>/codec-keys."
            )
        return KeyRing.parse(self.codec_keys.get_secret_value())

    @property
    def resolved_codec_cors_origins(self) -> list[str]:
        return self.codec_cors_origins or [f"http://127.0.0.1:{self.ui_port}", f"http://localhost:{self.ui_port}"]

    @property
    def codec_endpoint(self) -> str:
        """The API's codec endpoint as a browser on this machine reaches it (the dev Web UI's
        --ui-codec-endpoint)."""
        host = "127.0.0.1" if self.api_host in ("", "0.0.0.0", "::") else self.api_host
        return f"http://{host}:{self.api_port}/codec"

    @property
    def docusign_webhook_url(self) -> str:
        """Where DocuSign Connect posts envelope events (the envelope's eventNotification)."""
        return f"{self.resolved_public_base_url}/v1/webhooks/docusign"


@lru_cache
def get_settings() -> Settings:
    return Settings()
