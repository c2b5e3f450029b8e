"""A real cluster: the NEEDFLOW_TEMPORAL_* connection settings (TLS, mTLS, an API key),
the Client.connect arguments built from them, and `starter.py setup-cluster`.

setup-cluster runs against a fresh Temporal dev server started without needflow's search
attributes. The dev server speaks no TLS (`temporal server start-dev` has no TLS option),
so the TLS tests put a TLS-terminating proxy in front of it (Python's ssl, a CA and
certificates made here with `cryptography`): the client's TLS, its server name, its CA
check and its client certificate (mTLS) are real; behind the proxy it is plain gRPC. An
API key is sent but not checked (the dev server accepts any), and Temporal Cloud's refusal
to add search attributes through the operator service is simulated at the RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr, ValidationError
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.testing import WorkflowEnvironment

import starter
import workflows.client as temporal_client
from config import Settings
from devstack.temporal import temporal_cli
from tests.helpers import TEST_CODEC_KEYS, IsolatedSettings
from workflows import SA_PRODUCT, SA_STAGE, SEARCH_ATTRIBUTES
from workflows.client import (
    DATA_CONVERTER,
    SearchAttributeConflict,
    SearchAttributesNotAllowed,
    TemporalConnectError,
    connect,
    connect_options,
    ensure_search_attributes,
)

SERVER_NAME = "temporal.needflow.test"
CONFLICT_NS = "needflow-conflict"
TLS_NS = "needflow-tls"
CLOUD_NS = "needflow-cloud"
API_KEY = "tmprl-cloud-api-key-do-not-print"
NAMES = [key.name for key in SEARCH_ATTRIBUTES]
#: As `temporal`, `tcld` and the Web UI spell the types: every attribute a Keyword (ids,
#: products, stages, statuses), and one Bool.
TYPES = {name: "Keyword" for name in NAMES} | {"NeedsAttention": "Bool"}


# ------------------------------------------------------------------------------ certificates


@dataclass
class Pki:
    ca: Path
    other_ca: Path  # a CA that signed nothing the server holds
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a key that is not the client certificate's
    stranger_cert: Path  # a client certificate signed by other_ca
    stranger_key: Path
    encrypted_key: Path  # the client's key, encrypted with a passphrase


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common_name: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> Path:
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca("needflow test CA")
    other_ca = _make_ca("some other CA")
    server = _make_leaf(ca, SERVER_NAME, server=True)
    client = _make_leaf(ca, "needflow-worker", server=False)
    stranger = _make_leaf(other_ca, "someone-else", server=False)
    return Pki(
        ca=_write_cert(d / "ca.pem", ca[0]),
        other_ca=_write_cert(d / "other-ca.pem", other_ca[0]),
        server_cert=_write_cert(d / "server.pem", server[0]),
        server_key=_write_key(d / "server.key", server[1]),
        client_cert=_write_cert(d / "client.pem", client[0]),
        client_key=_write_key(d / "client.key", client[1]),
        other_key=_write_key(d / "other.key", ec.generate_private_key(ec.SECP256R1())),
        encrypted_key=_write_key(d / "client-encrypted.key", client[1], passphrase=b"secret"),
        stranger_cert=_write_cert(d / "stranger.pem", stranger[0]),
        stranger_key=_write_key(d / "stranger.key", stranger[1]),
    )


# ------------------------------------------------------------------------------ settings


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment with no needflow variable but the ones a test sets."""
    for name in list(os.environ):
        if name.startswith(("NEEDFLOW_", "DOCUSIGN_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    yield monkeypatch


def load(env: pytest.MonkeyPatch, **variables: str | Path) -> Settings:
    """Settings() from these NEEDFLOW_TEMPORAL_* variables (names without the prefix)."""
    for name, value in variables.items():
        env.setenv(f"NEEDFLOW_TEMPORAL_{name.upper()}", str(value))
    return Settings()


def load_error(env: pytest.MonkeyPatch, **variables: str | Path) -> str:
    with pytest.raises(ValidationError) as caught:
        load(env, **variables)
    return str(caught.value)


def test_a_client_certificate_needs_its_key_and_the_key_its_certificate(
    environment: pytest.MonkeyPatch, pki: Pki
) -> None:
    message = load_error(environment, address="temporal.bank.example:7233", tls_cert=pki.client_cert)
    assert "NEEDFLOW_TEMPORAL_TLS_CERT is set but NEEDFLOW_TEMPORAL_TLS_KEY is not" in message
    environment.delenv("NEEDFLOW_TEMPORAL_TLS_CERT")
    message = load_error(environment, tls_key=pki.client_key)
    assert "NEEDFLOW_TEMPORAL_TLS_KEY is set but NEEDFLOW_TEMPORAL_TLS_CERT is not" in message


def test_every_file_must_exist_be_readable_and_hold_what_it_should(
    environment: pytest.MonkeyPatch, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    message = load_error(environment, address="temporal.bank.example:7233", tls_ca=missing)
    assert f"NEEDFLOW_TEMPORAL_TLS_CA '{missing}' cannot be read: No such file or directory" in message
    environment.delenv("NEEDFLOW_TEMPORAL_TLS_CA")

    message = load_error(environment, tls_cert=tmp_path, tls_key=pki.client_key)  # a directory
    assert f"NEEDFLOW_TEMPORAL_TLS_CERT '{tmp_path}' cannot be read" in message

    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    message = load_error(environment, tls_cert=not_pem, tls_key=pki.client_key)
    assert f"NEEDFLOW_TEMPORAL_TLS_CERT '{not_pem}' holds no PEM certificate" in message

    message = load_error(environment, tls_cert=pki.client_cert, tls_key=pki.client_cert)
    assert f"NEEDFLOW_TEMPORAL_TLS_KEY '{pki.client_cert}' is not a PEM private key" in message

    message = load_error(environment, tls_cert=pki.client_cert, tls_key=pki.encrypted_key)
    assert f"NEEDFLOW_TEMPORAL_TLS_KEY '{pki.encrypted_key}' is encrypted" in message

    message = load_error(environment, tls_cert=pki.client_cert, tls_key=pki.other_key)
    assert "is not the private key of the certificate in NEEDFLOW_TEMPORAL_TLS_CERT" in message
    assert "PRIVATE KEY" not in message  # names the files, never shows what is in them

    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "ca-unreadable.pem"
        unreadable.write_bytes(pki.ca.read_bytes())
        unreadable.chmod(0)
        message = load_error(environment, tls_cert=pki.client_cert, tls_key=pki.client_key, tls_ca=unreadable)
        assert f"NEEDFLOW_TEMPORAL_TLS_CA '{unreadable}' cannot be read: Permission denied" in message

    settings = load(environment, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
    assert (settings.temporal_tls_ca, settings.temporal_tls_cert, settings.temporal_tls_key) == (
        pki.ca, pki.client_cert, pki.client_key,
    )  # fmt: skip
    assert settings.temporal_tls is True  # a CA or a client certificate turns TLS on


def test_an_api_key_turns_tls_on_and_refuses_tls_off(environment: pytest.MonkeyPatch) -> None:
    settings = load(environment, address="ns.acct.tmprl.cloud:7233", api_key=API_KEY)
    assert settings.temporal_tls is True
    assert settings.temporal_api_key is not None and settings.temporal_api_key.get_secret_value() == API_KEY

    message = load_error(environment, tls="false")
    assert "NEEDFLOW_TEMPORAL_TLS is false, but NEEDFLOW_TEMPORAL_API_KEY only work over TLS" in message

    environment.setenv("NEEDFLOW_TEMPORAL_TLS", "true")
    assert Settings().temporal_tls is True
    environment.delenv("NEEDFLOW_TEMPORAL_ADDRESS")
    message = load_error(environment)
    assert "NEEDFLOW_TEMPORAL_ADDRESS is not set: the local dev server speaks no TLS" in message


def test_no_tls_variable_means_plain_and_blank_means_unset(environment: pytest.MonkeyPatch) -> None:
    settings = load(environment, tls_cert="", tls_key=" ", tls_ca="", tls_server_name="", api_key="")
    assert settings.temporal_tls is False
    assert (settings.temporal_tls_cert, settings.temporal_tls_ca, settings.temporal_api_key) == (None, None, None)
    message = load_error(environment, address="x:7233", tls_server_name="https://x:443")
    assert "NEEDFLOW_TEMPORAL_TLS_SERVER_NAME must be a host name" in message


def test_secrets_appear_in_no_repr_and_no_error(environment: pytest.MonkeyPatch, pki: Pki) -> None:
    environment.setenv("NEEDFLOW_CODEC_KEYS", TEST_CODEC_KEYS)
    settings = load(environment, address="ns.acct.tmprl.cloud:7233", api_key=API_KEY)
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert API_KEY not in text
        assert TEST_CODEC_KEYS not in text
    # A validation error names what is wrong, never what was given.
    message = load_error(environment, tls_cert=pki.client_cert)
    assert "NEEDFLOW_TEMPORAL_TLS_KEY is not" in message
    assert API_KEY not in message
    assert TEST_CODEC_KEYS.split(":")[1] not in message
    # ...nor does a connection's description.
    assert API_KEY not in temporal_client.describe_connection(settings)


def test_the_namespace_is_read_from_either_name(environment: pytest.MonkeyPatch) -> None:
    assert Settings().namespace == "default"
    environment.setenv("NEEDFLOW_NAMESPACE", "older-name")
    assert Settings().namespace == "older-name"
    environment.setenv("NEEDFLOW_TEMPORAL_NAMESPACE", "bank-prod")
    assert Settings().namespace == "bank-prod"
    assert IsolatedSettings(namespace="in-code").namespace == "in-code"


# ------------------------------------------------------------------------------ connect options


def test_connect_options_carry_the_exact_bytes_of_the_files(pki: Pki) -> None:
    settings = IsolatedSettings(
        temporal_address="temporal.bank.example:7233",
        namespace="bank-prod",
        temporal_tls_ca=pki.ca,
        temporal_tls_cert=pki.client_cert,
        temporal_tls_key=pki.client_key,
        temporal_tls_server_name=SERVER_NAME,
        temporal_api_key=SecretStr(API_KEY),
    )
    options = connect_options(settings)
    assert set(options) == {"target_host", "namespace", "tls", "api_key"}
    assert options["target_host"] == "temporal.bank.example:7233"
    assert options["namespace"] == "bank-prod"
    assert options["api_key"] == API_KEY
    tls = options["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert == pki.ca.read_bytes()
    assert tls.client_cert == pki.client_cert.read_bytes()
    assert tls.client_private_key == pki.client_key.read_bytes()
    assert tls.domain == SERVER_NAME


def test_connect_options_plain_or_with_the_systems_roots() -> None:
    plain = connect_options(IsolatedSettings(temporal_port=7299))
    assert plain == {"target_host": "127.0.0.1:7299", "namespace": "default", "tls": False, "api_key": None}
    cloud = connect_options(
        IsolatedSettings(temporal_address="ns.acct.tmprl.cloud:7233", namespace="ns.acct", temporal_api_key=API_KEY)
    )
    assert cloud == {"target_host": "ns.acct.tmprl.cloud:7233", "namespace": "ns.acct", "tls": True, "api_key": API_KEY}


def test_only_connect_for_payloads_needs_the_payload_keys() -> None:
    settings = IsolatedSettings(temporal_address="127.0.0.1:1")  # no NEEDFLOW_CODEC_KEYS
    with pytest.raises(ValueError, match="NEEDFLOW_CODEC_KEYS is not set"):
        asyncio.run(connect(settings))
    with pytest.raises(TemporalConnectError, match=r"could not connect to Temporal at 127\.0\.0\.1:1 \(namespace"):
        asyncio.run(connect(settings, payloads=False))


# ------------------------------------------------------------------------------ setup-cluster


@pytest_asyncio.fixture(scope="module")
async def bare_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server with none of needflow's search attributes, on any namespace."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=[],
        data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--namespace", CONFLICT_NS, "--namespace", TLS_NS, "--namespace", CLOUD_NS],
    )
    try:
        yield env
    finally:
        await env.shutdown()


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


@dataclass
class Run:
    code: int
    out: str
    err: str


def setup_cluster(settings: Settings) -> Run:
    """`python starter.py setup-cluster` in process (in a thread: it runs its own loop)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = starter.main(["setup-cluster"], settings=settings, environ={})
    return Run(code, out.getvalue(), err.getvalue())


async def custom_attributes(client: Client, namespace: str) -> dict[str, int]:
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    return dict(listed.custom_attributes)


async def test_setup_cluster_registers_the_search_attributes_once(
    bare_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = bare_env.client
    attributes = TypedSearchAttributes(
        [SearchAttributePair(SA_STAGE, "interested"), SearchAttributePair(SA_PRODUCT, "mortgage")]
    )
    before = await custom_attributes(client, "default")
    assert not set(NAMES) & set(before)
    with pytest.raises(RPCError) as refused:  # what a worker would meet on an unprepared cluster
        await client.start_workflow(
            "Nothing", id=f"sa-{uuid.uuid4()}", task_queue="nowhere", search_attributes=attributes
        )
    assert refused.value.status == RPCStatusCode.INVALID_ARGUMENT

    settings = IsolatedSettings(temporal_address=address_of(bare_env), data_dir=tmp_path)  # no payload keys
    first = await asyncio.to_thread(setup_cluster, settings)
    assert first.code == 0, first.err
    assert f"connected to Temporal at {address_of(bare_env)} (namespace 'default', no TLS)" in first.out
    assert "namespace 'default' exists (retention 1 days)" in first.out
    assert f"registered search attribute(s): {', '.join(NAMES)}" in first.out
    after = await custom_attributes(client, "default")
    assert {name: after[name] for name in NAMES} == {
        name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{TYPES[name].upper()}") for name in NAMES
    }

    again = await asyncio.to_thread(setup_cluster, settings)
    assert again.code == 0, again.err
    assert "registered search attribute(s)" not in again.out
    assert f"already registered: {', '.join(NAMES)}" in again.out
    assert await custom_attributes(client, "default") == after

    handle = await client.start_workflow(
        "Nothing", id=f"sa-{uuid.uuid4()}", task_queue="nowhere", search_attributes=attributes
    )
    try:
        described = await handle.describe()
        assert described.typed_search_attributes.get(SA_STAGE) == "interested"
        assert described.typed_search_attributes.get(SA_PRODUCT) == "mortgage"
    finally:
        await handle.terminate("the test is over")


async def test_setup_cluster_refuses_a_name_taken_with_another_type(bare_env: WorkflowEnvironment) -> None:
    client = bare_env.client
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=CONFLICT_NS, search_attributes={"Stage": IndexedValueType.INDEXED_VALUE_TYPE_INT}
        )
    )
    run = await asyncio.to_thread(
        setup_cluster, IsolatedSettings(temporal_address=address_of(bare_env), namespace=CONFLICT_NS)
    )
    assert run.code == 1
    assert "Stage is registered as Int, needflow needs Keyword" in run.err
    assert "Product" not in await custom_attributes(client, CONFLICT_NS)  # nothing added, nothing half-done

    with pytest.raises(SearchAttributeConflict):
        await ensure_search_attributes(client, CONFLICT_NS)


async def test_setup_cluster_says_when_the_namespace_does_not_exist(bare_env: WorkflowEnvironment) -> None:
    settings = IsolatedSettings(temporal_address=address_of(bare_env), namespace="no-such-namespace")
    run = await asyncio.to_thread(setup_cluster, settings)
    assert run.code == 1
    assert "namespace 'no-such-namespace' does not exist on" in run.err
    assert "temporal operator namespace create --namespace no-such-namespace" in run.err


class _CloudOperatorService:
    """The operator service as Temporal Cloud answers it: listing works, adding is refused."""

    def __init__(self, real: Any) -> None:
        self.list_search_attributes = real.list_search_attributes

    async def add_search_attributes(self, *args: Any, **kwargs: Any) -> None:
        raise RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")


@dataclass
class _CloudClient:
    namespace: str
    operator_service: _CloudOperatorService


async def test_setup_cluster_explains_temporal_cloud(
    bare_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_ensure = temporal_client.ensure_search_attributes

    async def as_on_cloud(client: Client, namespace: str | None = None) -> Any:
        return await real_ensure(
            _CloudClient(client.namespace, _CloudOperatorService(client.operator_service)), namespace
        )

    monkeypatch.setattr(temporal_client, "ensure_search_attributes", as_on_cloud)
    run = await asyncio.to_thread(
        setup_cluster, IsolatedSettings(temporal_address=address_of(bare_env), namespace=CLOUD_NS)
    )
    assert run.code == 1
    assert "search attributes not registered" in run.err and "PERMISSION_DENIED" not in run.err
    assert "Request unauthorized." in run.err
    flags = " ".join(f'--search-attribute "{name}={TYPES[name]}"' for name in NAMES)
    assert f"tcld namespace search-attributes add --namespace {CLOUD_NS} {flags}" in run.out
    assert not set(NAMES) & set(await custom_attributes(bare_env.client, CLOUD_NS))

    with pytest.raises(SearchAttributesNotAllowed) as refused:
        await as_on_cloud(bare_env.client, CLOUD_NS)
    assert refused.value.status == RPCStatusCode.PERMISSION_DENIED
    assert refused.value.missing == [f"{name}={TYPES[name]}" for name in NAMES]


# ------------------------------------------------------------------------------ TLS


class TlsProxy:
    """A TLS server (Python's ssl) in front of the dev server's plain gRPC port, in a
    thread of its own; with `client_ca`, it asks for a client certificate signed by it."""

    def __init__(self, upstream: str, pki: Pki, *, client_ca: Path | None = None) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        self.context.set_alpn_protocols(["h2"])
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # refused handshakes are the point
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context))
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-proxy", daemon=True)
        self.thread.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def close() -> None:  # the connections clients still hold too
            self.server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def tls_proxy(bare_env: WorkflowEnvironment, pki: Pki) -> Iterator[TlsProxy]:
    proxy = TlsProxy(address_of(bare_env), pki)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def mtls_proxy(bare_env: WorkflowEnvironment, pki: Pki) -> Iterator[TlsProxy]:
    proxy = TlsProxy(address_of(bare_env), pki, client_ca=pki.ca)
    yield proxy
    proxy.stop()


def tls_settings(proxy: TlsProxy, pki: Pki, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "temporal_address": proxy.address,
        "namespace": TLS_NS,
        "temporal_tls_ca": pki.ca,
        "temporal_tls_cert": pki.client_cert,
        "temporal_tls_key": pki.client_key,
        "temporal_tls_server_name": SERVER_NAME,
    }
    values.update(overrides)
    return IsolatedSettings(**{k: v for k, v in values.items() if v is not None})


async def test_setup_cluster_over_mtls(mtls_proxy: TlsProxy, pki: Pki, bare_env: WorkflowEnvironment) -> None:
    run = await asyncio.to_thread(setup_cluster, tls_settings(mtls_proxy, pki))
    assert run.code == 0, run.err
    assert f"(namespace '{TLS_NS}', TLS with CA {pki.ca}, client certificate {pki.client_cert}, " in run.out
    assert f"registered search attribute(s): {', '.join(NAMES)}" in run.out
    assert set(NAMES) <= set(await custom_attributes(bare_env.client, TLS_NS))


async def test_the_worker_and_api_connect_the_same_way_over_tls(tls_proxy: TlsProxy, pki: Pki) -> None:
    # The settings a Temporal Cloud deployment with an API key would have (+ this CA).
    settings = tls_settings(
        tls_proxy, pki, temporal_tls_cert=None, temporal_tls_key=None,
        temporal_api_key=SecretStr(API_KEY), codec_keys=TEST_CODEC_KEYS,
    )  # fmt: skip
    client = await connect(settings)
    assert client.namespace == TLS_NS
    config = client.service_client.config
    assert config.api_key == API_KEY and isinstance(config.tls, TLSConfig)
    assert await client.workflow_service.get_system_info(GetSystemInfoRequest())


async def test_a_wrong_ca_fails_clearly(tls_proxy: TlsProxy, pki: Pki) -> None:
    settings = tls_settings(tls_proxy, pki, temporal_tls_ca=pki.other_ca, temporal_tls_cert=None, temporal_tls_key=None)
    with pytest.raises(TemporalConnectError) as failed:
        await connect(settings, payloads=False)
    message = str(failed.value)
    assert (
        f"could not connect to Temporal at {tls_proxy.address} (namespace '{TLS_NS}', TLS with CA {pki.other_ca}"
        in message
    )
    assert "is not signed by the CA in NEEDFLOW_TEMPORAL_TLS_CA: name the CA that signed it" in message


async def test_the_system_roots_do_not_trust_a_private_ca(tls_proxy: TlsProxy, pki: Pki) -> None:
    settings = IsolatedSettings(
        temporal_address=tls_proxy.address, temporal_tls=True, temporal_tls_server_name=SERVER_NAME
    )
    with pytest.raises(TemporalConnectError, match="set NEEDFLOW_TEMPORAL_TLS_CA to the CA that signed it"):
        await connect(settings, payloads=False)


async def test_a_certificate_for_another_name_fails_clearly(tls_proxy: TlsProxy, pki: Pki) -> None:
    settings = tls_settings(
        tls_proxy, pki, temporal_tls_server_name=None, temporal_tls_cert=None, temporal_tls_key=None
    )
    with pytest.raises(TemporalConnectError, match="set NEEDFLOW_TEMPORAL_TLS_SERVER_NAME"):
        await connect(settings, payloads=False)


async def test_mtls_without_a_client_certificate_is_refused(mtls_proxy: TlsProxy, pki: Pki) -> None:
    settings = tls_settings(mtls_proxy, pki, temporal_tls_cert=None, temporal_tls_key=None)
    with pytest.raises(
        TemporalConnectError, match="if it requires client certificates \\(mTLS\\), set NEEDFLOW_TEMPORAL_TLS_CERT"
    ):
        await connect(settings, payloads=False)


async def test_mtls_with_a_certificate_the_server_does_not_accept_is_refused(mtls_proxy: TlsProxy, pki: Pki) -> None:
    settings = tls_settings(mtls_proxy, pki, temporal_tls_cert=pki.stranger_cert, temporal_tls_key=pki.stranger_key)
    with pytest.raises(
        TemporalConnectError, match="it may not accept the client certificate in NEEDFLOW_TEMPORAL_TLS_CERT"
    ):
        await connect(settings, payloads=False)


async def test_plain_grpc_to_a_tls_port_fails(tls_proxy: TlsProxy) -> None:
    settings = IsolatedSettings(temporal_address=tls_proxy.address)
    with pytest.raises(TemporalConnectError, match="no TLS"):
        await connect(settings, payloads=False)
