"""How every process talks to Temporal: one data converter and one way to connect.

The worker, the API, the starter, the replayer and the tests all use `DATA_CONVERTER`,
so the payload codec that encrypts customer data in histories (`workflows/codec.py`) is
added here once and reaches every reader and writer of history alike.

`CODEC` holds no key until it is given the process's keys: `connect` gives it the
settings' (NEEDFLOW_CODEC_KEYS, and refuses to connect without them); the tests give it
their fixed test key (tests/conftest.py). Until then it decrypts nothing and encrypts
nothing, so no payload is ever written in the clear by a process that forgot its keys.

`connect` reaches a real cluster too: TLS, mTLS and a Temporal Cloud API key come from
the settings (NEEDFLOW_TEMPORAL_*, checked when they load) through `connect_options`.
`ensure_search_attributes` registers needflow's search attributes (workflows.SEARCH_ATTRIBUTES)
on a namespace: the dev stack runs it after starting its dev server, `starter.py
setup-cluster` on a real cluster.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from config import Settings
from observability.tracing import client_interceptors
from workflows.codec import EncryptionCodec, KeyRing

#: Encrypts every payload with the current key, decrypts with any configured one.
CODEC = EncryptionCodec()

#: Workflow inputs, update arguments and results are pydantic models, encrypted by CODEC.
#: A failure's message and stack trace go into its encoded (so encrypted) attributes too:
#: an exception's message may quote a customer.
DATA_CONVERTER: DataConverter = dataclasses.replace(
    pydantic_data_converter,
    payload_codec=CODEC,
    failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
)


def use_codec_keys(keys: KeyRing) -> None:
    """From now on this process encrypts with `keys.current` and decrypts with any of them."""
    CODEC.use(keys)


class TemporalConnectError(RuntimeError):
    """The cluster could not be reached or refused the connection; the message names the
    address, the namespace and the TLS settings used (never a key)."""


def _read(path: Path | None, variable: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise TemporalConnectError(f"{variable} {str(path)!r} cannot be read: {e.strerror}") from None


def connect_options(settings: Settings) -> dict[str, Any]:
    """`Client.connect`'s keyword arguments for the cluster the settings name: target
    host, namespace, TLS and API key. TLS is False (plain), True (the system's roots) or a
    TLSConfig carrying the bytes of the configured files, read now."""
    tls: bool | TLSConfig = settings.temporal_tls
    if settings.temporal_tls and (
        settings.temporal_tls_ca or settings.temporal_tls_cert or settings.temporal_tls_server_name
    ):
        tls = TLSConfig(
            server_root_ca_cert=_read(settings.temporal_tls_ca, "NEEDFLOW_TEMPORAL_TLS_CA"),
            domain=settings.temporal_tls_server_name,
            client_cert=_read(settings.temporal_tls_cert, "NEEDFLOW_TEMPORAL_TLS_CERT"),
            client_private_key=_read(settings.temporal_tls_key, "NEEDFLOW_TEMPORAL_TLS_KEY"),
        )
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return {
        "target_host": settings.resolved_temporal_address,
        "namespace": settings.namespace,
        "tls": tls,
        "api_key": api_key,
    }


def describe_connection(settings: Settings) -> str:
    """Where and how `connect` connects, for messages and logs: no key, no file content."""
    if not settings.temporal_tls:
        how = "no TLS"
    else:
        parts = [f"CA {settings.temporal_tls_ca}" if settings.temporal_tls_ca else "the system's CAs"]
        if settings.temporal_tls_cert:
            parts.append(f"client certificate {settings.temporal_tls_cert}")
        if settings.temporal_tls_server_name:
            parts.append(f"server name {settings.temporal_tls_server_name}")
        how = "TLS with " + ", ".join(parts)
    if settings.temporal_api_key:
        how += ", API key"
    return f"{settings.resolved_temporal_address} (namespace {settings.namespace!r}, {how})"


def _connect_hint(settings: Settings, message: str) -> str:
    """What to check, from the error the SDK (rustls, tonic) reports."""
    text = message.lower().replace(" ", "")
    if "unknownissuer" in text:
        if settings.temporal_tls_ca:
            return " The server's certificate is not signed by the CA in NEEDFLOW_TEMPORAL_TLS_CA: name the CA that signed it."
        return (
            " The server's certificate is not signed by a CA this client trusts: set NEEDFLOW_TEMPORAL_TLS_CA to the CA "
            "that signed it (unset, only the system's CAs are trusted)."
        )
    if "notvalidforname" in text:
        return (
            " The server's certificate does not name the host connected to: set NEEDFLOW_TEMPORAL_TLS_SERVER_NAME to "
            "a name it holds."
        )
    ended = ("alertreceived", "close_notify", "unexpectedeof", "connectionclosed", "connectionreset", "brokenpipe")
    if settings.temporal_tls and any(sign in text for sign in ended):
        if settings.temporal_tls_cert:
            return (
                " The server ended the TLS connection: it may not accept the client certificate in "
                "NEEDFLOW_TEMPORAL_TLS_CERT (signed by a CA it does not accept, expired, or not for this namespace)."
            )
        return (
            " The server ended the TLS connection: if it requires client certificates (mTLS), set "
            "NEEDFLOW_TEMPORAL_TLS_CERT and NEEDFLOW_TEMPORAL_TLS_KEY."
        )
    if "certificate" in text or "handshake" in text:
        return " TLS failed: check NEEDFLOW_TEMPORAL_TLS_CA, _CERT, _KEY and _SERVER_NAME against the cluster's."
    if not settings.temporal_tls and ("connectionreset" in text or "brokenpipe" in text or "h2protocol" in text):
        return " If the cluster expects TLS, set NEEDFLOW_TEMPORAL_TLS=true."
    return ""


async def connect(settings: Settings, *, payloads: bool = True) -> Client:
    """A client of the cluster the settings name (address, namespace, TLS, API key: see
    `connect_options`), with needflow's data converter holding the settings' payload
    keys (a ValueError naming NEEDFLOW_CODEC_KEYS when there are none), and the tracing
    interceptor when tracing is on (observability/tracing.py; workers built on it trace too).

    `payloads=False`: a client for cluster operations only (namespaces, search
    attributes), which needs no payload keys; its data converter is the same, so it
    still writes no payload in the clear. A connection that fails raises
    TemporalConnectError saying where to and how, and what to check."""
    if payloads:
        use_codec_keys(settings.codec_keyring())
    options = connect_options(settings)
    try:
        return await Client.connect(
            **options, data_converter=DATA_CONVERTER, interceptors=client_interceptors(settings)
        )
    except (RuntimeError, RPCError) as err:
        message = str(err) or type(err).__name__
        raise TemporalConnectError(
            f"could not connect to Temporal at {describe_connection(settings)}: {message}."
            + _connect_hint(settings, message)
        ) from err


# ------------------------------------------------------------------------ search attributes


def search_attribute_type_name(value_type: int) -> str:
    """A search attribute type as `temporal`, `tcld` and the Web UI spell it: Keyword,
    KeywordList, Datetime, ..."""
    name = SearchAttributeIndexedValueType(int(value_type)).name
    return "".join(part.capitalize() for part in name.split("_"))


@dataclass
class SearchAttributeSetup:
    """What `ensure_search_attributes` found and did on a namespace."""

    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


class SearchAttributeError(Exception):
    """needflow's search attributes cannot be registered as they are: the message says why."""


class SearchAttributeConflict(SearchAttributeError):
    """A name needflow uses is registered with another type (or is one of Temporal's own)."""


class SearchAttributesNotAllowed(SearchAttributeError):
    """The cluster refused to add search attributes through the operator service, as
    Temporal Cloud does (there, tcld or the Cloud UI adds them) or a self-hosted cluster
    does for a caller without the admin role. `missing`: the names still to add, as
    NAME=Type."""

    def __init__(self, message: str, missing: list[str], status: RPCStatusCode | None) -> None:
        super().__init__(message)
        self.missing = missing
        self.status = status


_REFUSED = (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.UNAUTHENTICATED)


async def ensure_search_attributes(client: Client, namespace: str | None = None) -> SearchAttributeSetup:
    """Register every workflows.SEARCH_ATTRIBUTES key on the namespace (default: the
    client's), through the operator service; idempotent: one already registered with
    the same type is left alone. SearchAttributeConflict when a name is taken with
    another type, SearchAttributesNotAllowed when the cluster refuses to add them."""
    from workflows import SEARCH_ATTRIBUTES

    namespace = namespace or client.namespace
    wanted = {key.name: int(key.indexed_value_type) for key in SEARCH_ATTRIBUTES}
    setup = SearchAttributeSetup()
    for _ in range(3):  # another setup racing this one makes an add answer ALREADY_EXISTS
        try:
            listed = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace)
            )
        except RPCError as err:
            if err.status in _REFUSED:
                missing = [f"{name}={search_attribute_type_name(t)}" for name, t in wanted.items()]
                raise SearchAttributesNotAllowed(
                    f"the cluster refused to list the search attributes of namespace {namespace!r}: {err.message}",
                    missing,
                    err.status,
                ) from err
            raise
        custom, system = dict(listed.custom_attributes), dict(listed.system_attributes)
        conflicts = [
            f"{name} is one of Temporal's own search attributes ({search_attribute_type_name(system[name])})"
            for name in wanted
            if name in system
        ] + [
            f"{name} is registered as {search_attribute_type_name(custom[name])}, "
            f"needflow needs {search_attribute_type_name(wanted[name])}"
            for name in wanted
            if name in custom and int(custom[name]) != wanted[name]
        ]
        if conflicts:
            raise SearchAttributeConflict(
                f"namespace {namespace!r} already has search attributes needflow cannot use: {'; '.join(conflicts)}. "
                "A search attribute's type cannot change: remove it (`temporal operator search-attribute remove`, "
                "after no workflow uses it) or register needflow on another namespace"
            )
        setup.present = [name for name in wanted if name in custom and name not in setup.added]
        missing = [name for name in wanted if name not in custom]
        if not missing:
            return setup
        try:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=namespace,
                    search_attributes={name: IndexedValueType.ValueType(wanted[name]) for name in missing},
                )
            )
        except RPCError as err:
            if err.status == RPCStatusCode.ALREADY_EXISTS:
                continue
            if err.status in _REFUSED:
                raise SearchAttributesNotAllowed(
                    f"the cluster refused to add search attributes to namespace {namespace!r}: {err.message}",
                    [f"{name}={search_attribute_type_name(wanted[name])}" for name in missing],
                    err.status,
                ) from err
            raise
        setup.added += missing
    raise SearchAttributeError(
        f"the search attributes of namespace {namespace!r} kept changing while they were being registered; "
        "run the setup again"
    )
