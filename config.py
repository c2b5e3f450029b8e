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

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificatePublicKeyTypes,
        PrivateKeyTypes,
        PublicKeyTypes,
    )
    from cryptography.x509 import Certificate

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


def _read_file(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"{variable} {str(path)!r} cannot be read: {e.strerror}") from None


def _pem_certificates(path: Path, variable: str) -> list[Certificate]:
    """The PEM certificates in the file (a chain or a bundle); a ValueError naming the
    variable and the file when it cannot be read or holds none."""
    from cryptography.x509 import load_pem_x509_certificates

    data = _read_file(path, variable)
    try:
        return load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{variable} {str(path)!r} holds no PEM certificate") from None


def _pem_private_key(path: Path, variable: str) -> PrivateKeyTypes:
    """The unencrypted PEM private key in the file; a ValueError naming the variable and
    the file (never its content) when it cannot be read or is no such key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_file(path, variable)
    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"{variable} {str(path)!r} is encrypted: Temporal's client needs the key unencrypted (PEM)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{variable} {str(path)!r} is not a PEM private key") from None


def _public_key_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error must not print what was given (the API key,
    # the payload keys). validate_by_name: Settings(namespace=...) in code, whatever the
    # field's environment variables (validation_alias) are called.
    model_config = SettingsConfigDict(
        env_prefix="NEEDFLOW_", extra="ignore", hide_input_in_errors=True, validate_by_name=True
    )

    data_dir: Path = Path("./var")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "NEEDFLOW_DATABASE_URL")
    )
    temporal_address: str | None = None  # unset: the dev stack starts its own dev server
    temporal_port: int = 7233
    ui_port: int = 8233
    api_port: int = 8000
    api_host: str = "127.0.0.1"
    #: NEEDFLOW_TEMPORAL_NAMESPACE, or NEEDFLOW_NAMESPACE (its first name, still read).
    namespace: str = Field(
        default="default", validation_alias=AliasChoices("NEEDFLOW_TEMPORAL_NAMESPACE", "NEEDFLOW_NAMESPACE")
    )
    # A real cluster (README "Running against a real cluster"): TLS, mTLS, a Temporal Cloud
    # API key. Checked at load; the files are read again at every connect.
    #: TLS to the Temporal frontend. Unset: on when a CA, client certificate, server name or
    #: API key is given (each needs TLS; set false with one of them is an error).
    temporal_tls: bool = False
    #: The client certificate (PEM, its chain may follow) for mTLS; with temporal_tls_key.
    temporal_tls_cert: Path | None = None
    #: Its private key (PEM, unencrypted).
    temporal_tls_key: Path | None = None
    #: The CA (PEM) the server's certificate must chain to; unset: the system's roots.
    temporal_tls_ca: Path | None = None
    #: The name sent as SNI and checked in the server's certificate, when it is not the
    #: address's host (e.g. connecting through a load balancer's IP).
    temporal_tls_server_name: str | None = None
    #: A Temporal Cloud API key (sent as a bearer token, over TLS only).
    temporal_api_key: SecretStr | None = None
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
    # smtps://… is TLS throughout; with a user, smtp:// must upgrade with STARTTLS first.
    smtp_url: str | None = None
    mail_from: str = "needflow@localhost"
    #: Seconds each SMTP network operation may take (activities/mail.py).
    smtp_timeout: float = Field(default=30, gt=0)
    #: A CA bundle (PEM) to verify the SMTP server's certificate with; unset: the system's.
    smtp_ca_file: Path | None = None
    #: A message's attempts before a temporary failure (4xx, connection lost) is final.
    mail_max_attempts: int = Field(default=8, ge=1)
    #: Seconds before a message's (or an unreachable server's) first retry, doubling each time, up to the max.
    mail_retry_seconds: float = Field(default=60, gt=0)
    mail_retry_max_seconds: float = Field(default=3600, gt=0)
    #: Seconds between the sender's looks at the outbox when nothing wakes it (workflows/mail.py).
    mail_poll_seconds: float = Field(default=300, gt=0)
    #: Workflows a worker keeps in memory between their tasks (temporalio's
    #: max_cached_workflows): one that is not must be replayed from its history before its
    #: next task. Each costs the worker ~0.12 MB (bench/open_many.py: with 6,000 cached it
    #: peaked at 1,009 MB); 5,000 leave it ~120 MB below 1 GiB. Size it to the worker's
    #: memory: a bank's open opportunities may be many more.
    workflow_cache: int = Field(default=5000, ge=0, le=1_000_000)
    #: Run workflow code in temporalio's sandbox, which re-imports the workflow's module
    #: for every run it starts or replays and fails a task that calls what a workflow must
    #: not (the clock, random, I/O). Off, the worker runs them as plain code (worker.py
    #: says why); the test suite runs them in the sandbox, so its checks stay.
    workflow_sandbox: bool = False
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
    #: The largest request body the API reads (api/limits.py): 413 beyond it.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    #: The same for POST /v1/imports: a book of 100,000 opportunities is about 90 MB.
    max_import_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    #: Seconds the API waits for a workflow to answer an update (a command, an event, a
    #: create) before it answers 503 `timeout` (api/workflows.py): under a typical client
    #: or proxy timeout (30 s), so the caller hears something rather than hangs while no
    #: worker runs or an activity retries. The update stays with the workflow: the same
    #: request repeated (same Idempotency-Key, or event id) later gets its outcome.
    update_deadline: float = Field(default=15, gt=0)
    #: That 503's `Retry-After`, in whole seconds.
    update_retry_after: int = Field(default=5, ge=1)
    #: Requests one API key may make to one API process (api/ratelimit.py), in the `limits`
    #: package's notation (`6000/minute`, `100/second;6000/minute`); `off`: no limit. Per
    #: process: N API processes allow N times as many. The default is a ceiling for a
    #: runaway client, not a quota: a bulk feed of events may send 100 a second.
    rate_limit: str | None = "6000/minute"
    #: The same per client address, for requests without a live key: signing pages,
    #: dashboard and codec sessions, webhooks, and every request with a missing or unknown key.
    rate_limit_anonymous: str | None = "600/minute"
    # Observability (observability/, README "Observability"). Off in a bare process; `make
    # run` turns the metrics ports on (on 127.0.0.1).
    #: The worker's Prometheus port (the Temporal SDK's metrics and the workflows' own);
    #: unset, empty or `off`: none.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: The API's Prometheus port (its Temporal client's metrics, events, the mail queue);
    #: unset, empty or `off`: none. A port of its own: /metrics never shares the API's.
    api_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: The address both metrics ports listen on: 0.0.0.0 for a Prometheus elsewhere.
    metrics_host: str = "127.0.0.1"
    #: Seconds between two looks at the mail queue for its gauges.
    metrics_interval: float = Field(default=15, gt=0)
    #: Traces: `otlp` (to OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318),
    #: `console`, or `off`; unset: `otlp` when OTEL_EXPORTER_OTLP_ENDPOINT is set, else off.
    tracing: Literal["off", "otlp", "console"] | None = None
    #: Only read to decide whether tracing is on (the exporter reads the OTEL_* variables).
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    #: `text` (one line, for people) or `json` (one object a line, for a log pipeline).
    log_format: Literal["text", "json"] = "text"

    @field_validator("metrics_port", "api_metrics_port", mode="before")
    @classmethod
    def _port_or_off(cls, v: object) -> object:
        return None if v is None or str(v).strip().lower() in ("", "off", "none", "0", "false") else v

    @field_validator("rate_limit", "rate_limit_anonymous", mode="before")
    @classmethod
    def _rate_limit(cls, v: object, info: ValidationInfo) -> str | None:
        from limits import parse_many

        text = None if v is None else str(v).strip()
        if text is None or text.lower() in ("", "off", "none", "0", "false"):
            return None
        try:
            parse_many(text)
        except ValueError:
            raise ValueError(
                f"NEEDFLOW_{str(info.field_name).upper()} must be a rate such as 6000/minute or "
                f"100/second;6000/minute (or off), got {text!r}"
            ) from None
        return text

    @field_validator("tracing", mode="before")
    @classmethod
    def _tracing(cls, v: object) -> object:
        text = None if v is None else str(v).strip().lower()
        return {"": None, "1": "otlp", "true": "otlp", "on": "otlp", "0": "off", "false": "off"}.get(text, text)

    @property
    def resolved_tracing(self) -> str:
        """`otlp`, `console` or `off` (NEEDFLOW_TRACING, else on with an OTLP endpoint)."""
        return self.tracing or ("otlp" if self.otlp_endpoint else "off")

    @field_validator("codec_keys", mode="before")
    @classmethod
    def _codec_keys(cls, v: str | SecretStr | None) -> SecretStr | None:
        # Parsed by codec_keyring(), not here: a validation error would print the keys.
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        return SecretStr(str(text).strip()) if text is not None and str(text).strip() else None

    @field_validator("temporal_tls_cert", "temporal_tls_key", "temporal_tls_ca", "temporal_tls_server_name",
                     "temporal_api_key", mode="before")  # fmt: skip
    @classmethod
    def _unset_when_blank(cls, v: object) -> object:
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        return None if text is None or not str(text).strip() else v

    @field_validator("temporal_tls_cert")
    @classmethod
    def _temporal_tls_cert(cls, v: Path | None) -> Path | None:
        if v is not None:
            _pem_certificates(v, "NEEDFLOW_TEMPORAL_TLS_CERT")
        return v

    @field_validator("temporal_tls_key")
    @classmethod
    def _temporal_tls_key(cls, v: Path | None) -> Path | None:
        if v is not None:
            _pem_private_key(v, "NEEDFLOW_TEMPORAL_TLS_KEY")
        return v

    @field_validator("temporal_tls_ca")
    @classmethod
    def _temporal_tls_ca(cls, v: Path | None) -> Path | None:
        if v is not None:
            _pem_certificates(v, "NEEDFLOW_TEMPORAL_TLS_CA")
        return v

    @field_validator("smtp_ca_file")
    @classmethod
    def _smtp_ca_file(cls, v: Path | None) -> Path | None:
        # Checked at start, like the Temporal CA: unread, it failed every round of the mail
        # sender as "SMTP server unavailable", retried for ever.
        if v is not None:
            _pem_certificates(v, "NEEDFLOW_SMTP_CA_FILE")
        return v

    @field_validator("temporal_tls_server_name")
    @classmethod
    def _temporal_tls_server_name(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not _HOST.match(v) or ":" in v:
            raise ValueError(
                f"NEEDFLOW_TEMPORAL_TLS_SERVER_NAME must be a host name such as temporal.bank.example "
                f"(no scheme, no port), got {v!r}"
            )
        return v

    @field_validator("temporal_api_key", mode="after")
    @classmethod
    def _temporal_api_key(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else SecretStr(v.get_secret_value().strip())

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

    @model_validator(mode="after")
    def _temporal_tls_configured(self) -> Settings:
        cert, key = self.temporal_tls_cert, self.temporal_tls_key
        if (cert is None) != (key is None):
            given, missing = (
                ("NEEDFLOW_TEMPORAL_TLS_CERT", "NEEDFLOW_TEMPORAL_TLS_KEY")
                if key is None
                else ("NEEDFLOW_TEMPORAL_TLS_KEY", "NEEDFLOW_TEMPORAL_TLS_CERT")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: mTLS needs the client certificate and its private key"
            )
        if cert is not None and key is not None:
            leaf = _pem_certificates(cert, "NEEDFLOW_TEMPORAL_TLS_CERT")[0]
            private = _pem_private_key(key, "NEEDFLOW_TEMPORAL_TLS_KEY")
            if _public_key_der(leaf.public_key()) != _public_key_der(private.public_key()):
                raise ValueError(
                    f"NEEDFLOW_TEMPORAL_TLS_KEY {str(key)!r} is not the private key of the certificate in "
                    f"NEEDFLOW_TEMPORAL_TLS_CERT {str(cert)!r} (its first certificate must be the client's own)"
                )
        needs_tls = [
            variable
            for variable, value in (
                ("NEEDFLOW_TEMPORAL_API_KEY", self.temporal_api_key),
                ("NEEDFLOW_TEMPORAL_TLS_CERT", cert),
                ("NEEDFLOW_TEMPORAL_TLS_CA", self.temporal_tls_ca),
                ("NEEDFLOW_TEMPORAL_TLS_SERVER_NAME", self.temporal_tls_server_name),
            )
            if value is not None
        ]
        if needs_tls and not self.temporal_tls:
            if "temporal_tls" in self.model_fields_set:
                raise ValueError(
                    f"NEEDFLOW_TEMPORAL_TLS is false, but {', '.join(needs_tls)} only work over TLS "
                    "(an API key is never sent in the clear): remove NEEDFLOW_TEMPORAL_TLS or set it to true"
                )
            self.temporal_tls = True
        if self.temporal_tls and not self.temporal_address:
            raise ValueError(
                "TLS to Temporal is configured (NEEDFLOW_TEMPORAL_TLS*, NEEDFLOW_TEMPORAL_API_KEY) but "
                "NEEDFLOW_TEMPORAL_ADDRESS is not set: the local dev server speaks no TLS; set the cluster's "
                "host:port (Temporal Cloud: <namespace>.<account>.tmprl.cloud:7233 or <region>.<cloud>.api.temporal.io:7233)"
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
