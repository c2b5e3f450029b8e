"""Customer data encrypted in workflow histories (issue 9, item 3).

The codec (workflows/codec.py) on its own: round trip, key rotation, an unknown key id,
payloads from before encryption; its configuration; the codec server for the Web UI and
the CLI (api/routers/codec.py): authentication, CORS, encode and decode. And the point of
it all: after real journeys on the dev server, the histories as the Temporal server keeps
them hold no customer's name, phone or e-mail, while decoding them with the codec finds
every one (so the search would see them if they were there).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from api.routers.codec import COOKIE
from config import Settings
from devstack.stack import dev_codec_keys
from devstack.temporal import temporal_cli, temporal_command
from domain.ids import opportunity_workflow_id, referral_workflow_id
from tests.helpers import TEST_CODEC_KEYS, Api, IsolatedSettings, LiveApi, assert_error, serve_app, within
from tests.journeys import checking_to_opened, mortgage_to_closed_won, referral_converted
from workflows.client import CODEC, DATA_CONVERTER, connect
from workflows.codec import (
    ENCODING,
    KEY_ID_METADATA,
    CodecError,
    EncryptionCodec,
    KeyRing,
    NoEncryptionKey,
    UnknownKeyId,
)

HISTORIES = Path(__file__).parent / "histories"
UI_ORIGIN = "http://127.0.0.1:8233"  # the dev Web UI (NEEDFLOW_UI_PORT's default)


def key(key_id: str, fill: int) -> str:
    return f"{key_id}:{base64.b64encode(bytes([fill]) * 32).decode()}"


def plain(value: object) -> Payload:
    """A payload as the pydantic converter writes it, before the codec."""
    return DATA_CONVERTER.payload_converter.to_payloads([value])[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_json(p: Payload) -> dict:
    return {"metadata": {k: b64(v) for k, v in p.metadata.items()}, "data": b64(p.data)}


def from_json(p: dict) -> Payload:
    return Payload(
        metadata={k: base64.b64decode(v) for k, v in p.get("metadata", {}).items()},
        data=base64.b64decode(p.get("data", "")),
    )


# ---------------------------------------------------------------- the codec


async def test_round_trip_encrypts_the_whole_payload() -> None:
    codec = EncryptionCodec(KeyRing.parse(key("k1", 1)))
    original = [plain({"name": "Kiara Jones", "email": "kiara@example.com"}), plain("+14155550123")]
    encoded = await codec.encode(original)
    for p in encoded:
        assert dict(p.metadata) == {"encoding": ENCODING, KEY_ID_METADATA: b"k1"}
        assert b"Kiara" not in p.data and b"+1415" not in p.data and b"json/plain" not in p.data
    assert encoded[0].data[:12] != encoded[1].data[:12]  # a fresh nonce per payload
    assert await codec.decode(encoded) == original
    # The same value twice encrypts to different bytes (nothing to compare in a history).
    again = await codec.encode(original[:1])
    assert again[0].data != encoded[0].data


async def test_rotation_decrypts_old_payloads_while_their_key_is_configured() -> None:
    before = EncryptionCodec(KeyRing.parse(key("k1", 1)))
    old = await before.encode([plain("Kiara Jones")])

    rotated = EncryptionCodec(KeyRing.parse(f"{key('k2', 2)},{key('k1', 1)}"))
    assert rotated.keys is not None and rotated.keys.ids == ["k2", "k1"]
    assert await rotated.decode(old) == [plain("Kiara Jones")]
    new = await rotated.encode([plain("Kiara Jones")])
    assert new[0].metadata[KEY_ID_METADATA] == b"k2"  # the first key encrypts
    assert await rotated.decode(new + old) == [plain("Kiara Jones")] * 2

    # Once k1 is dropped, its payloads fail, naming the key id: never read as something else.
    retired = EncryptionCodec(KeyRing.parse(key("k2", 2)))
    with pytest.raises(UnknownKeyId, match=r"key id 'k1', which is not configured \(configured: k2\)"):
        await retired.decode(old)


async def test_a_wrong_key_under_the_same_id_or_an_altered_payload_fails_clearly() -> None:
    [sealed] = await EncryptionCodec(KeyRing.parse(key("k1", 1))).encode([plain("Kiara Jones")])
    with pytest.raises(CodecError, match="does not decrypt"):
        await EncryptionCodec(KeyRing.parse(key("k1", 9))).decode([sealed])
    altered = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(CodecError, match="does not decrypt"):
        await EncryptionCodec(KeyRing.parse(key("k1", 1))).decode([altered])


async def test_payloads_never_encrypted_pass_through_unchanged() -> None:
    codec = EncryptionCodec(KeyRing.parse(key("k1", 1)))
    payloads = [plain({"name": "Rachel Adams"}), Payload(metadata={"encoding": b"binary/null"}), Payload()]
    assert await codec.decode(payloads) == payloads
    # Every plain payload of the saved histories: all of those recorded before encryption
    # (v0-* and the first recordings); the v1-* ones are sealed with the test key.
    saved = [from_json(p) for f in sorted(HISTORIES.glob("*.json")) for p in _json_payloads(json.loads(f.read_text()))]
    unsealed = [p for p in saved if p.metadata.get("encoding") != ENCODING]
    assert unsealed and await CODEC.decode(unsealed) == unsealed


async def test_without_keys_nothing_is_encrypted_nor_decrypted() -> None:
    codec = EncryptionCodec()
    with pytest.raises(NoEncryptionKey, match="never written in the clear"):
        await codec.encode([plain("Kiara Jones")])
    [sealed] = await EncryptionCodec(KeyRing.parse(key("k1", 1))).encode([plain("x")])
    with pytest.raises(UnknownKeyId, match="configured: none"):
        await codec.decode([sealed])
    assert await codec.decode([plain("x")]) == [plain("x")]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "holds no key"),
        ("k1", "entry 1 must be KEY_ID:BASE64_KEY"),
        (f"{key('k1', 1)},k2:", "entry 2 must be KEY_ID:BASE64_KEY"),
        ("k1:not base64!", r"entry 1 \(k1\): the key is not base64"),
        (f"k1:{b64(b'short')}", r"must be 32 random bytes \(AES-256\), got 5"),
        (f"{key('k1', 1)},{key('k1', 2)}", "names key id 'k1' twice"),
        (f"bad id:{b64(bytes(32))}", "key id 'bad id' must be"),
    ],
)
def test_malformed_keys_are_refused_naming_the_entry_never_the_key(value: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as err:
        KeyRing.parse(value)
    assert "NEEDFLOW_CODEC_KEYS" in str(err.value)
    assert b64(bytes([1]) * 32) not in str(err.value) and b64(bytes([2]) * 32) not in str(err.value)


def test_keys_come_from_the_environment_first_one_current(monkeypatch: pytest.MonkeyPatch) -> None:
    urlsafe = base64.urlsafe_b64encode(bytes([250]) * 32).decode().rstrip("=")  # URL-safe, unpadded
    monkeypatch.setenv("NEEDFLOW_CODEC_KEYS", f" k2:{urlsafe} , {key('k1', 1)} ")
    monkeypatch.setenv("NEEDFLOW_CODEC_CORS_ORIGINS", "https://temporal.bank.example/,http://localhost:8080")
    settings = Settings()
    ring = settings.codec_keyring()
    assert (ring.current, ring.ids, ring.keys["k2"]) == ("k2", ["k2", "k1"], bytes([250]) * 32)
    assert urlsafe not in repr(settings) and urlsafe not in repr(ring)  # a SecretStr; KeyRing hides keys
    assert settings.resolved_codec_cors_origins == ["https://temporal.bank.example", "http://localhost:8080"]


async def test_no_worker_or_api_connects_without_keys() -> None:
    with pytest.raises(ValueError, match="NEEDFLOW_CODEC_KEYS is not set") as err:
        await connect(IsolatedSettings(temporal_address="127.0.0.1:1"))
    assert "python -m workflows.codec" in str(err.value) and "make run" in str(err.value)
    assert CODEC.keys == KeyRing.parse(TEST_CODEC_KEYS)  # left as it was
    with pytest.raises(ValueError, match="must be 32 random bytes"):
        await connect(IsolatedSettings(temporal_address="127.0.0.1:1", codec_keys=f"k1:{b64(b'short')}"))


def test_the_dev_stack_makes_a_key_once_and_wires_the_ui_to_the_codec(tmp_path: Path) -> None:
    settings = IsolatedSettings(data_dir=tmp_path, api_port=8123, ui_port=8234)
    made = dev_codec_keys(settings)
    path = tmp_path / "codec-keys"
    assert path.read_text().strip() == made and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.parse(made).current.startswith("dev-")
    assert dev_codec_keys(settings) == made  # kept: the dev server's histories need it
    configured = key("prod-1", 7)
    assert dev_codec_keys(IsolatedSettings(data_dir=tmp_path, codec_keys=configured)) == configured
    command = temporal_command(settings, tmp_path)
    assert command[command.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:8123/codec"
    assert settings.resolved_codec_cors_origins == ["http://127.0.0.1:8234", "http://localhost:8234"]


# ---------------------------------------------------------------- the codec server


async def codec_call(
    http: httpx.AsyncClient, what: str, payloads: list[Payload], headers: dict[str, str]
) -> httpx.Response:
    body = {"payloads": [as_json(p) for p in payloads]}
    headers = {"Content-Type": "application/json", "X-Namespace": "default", **headers}
    return await within(http.post(f"/codec/{what}?preserveStorageRefs=true", json=body, headers=headers), what)


async def test_the_codec_server_encodes_and_decodes_for_an_admin_key(api: Api, keys: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {keys['admin']}"}
    original = [plain({"name": "Kiara Jones"}), plain("+14155550123")]
    r = await codec_call(api.http, "encode", original, auth)
    assert r.status_code == 200, r.text
    encoded = [from_json(p) for p in r.json()["payloads"]]
    assert [(p.metadata["encoding"], p.metadata[KEY_ID_METADATA]) for p in encoded] == [(ENCODING, b"test")] * 2
    assert all(b"Kiara" not in p.data for p in encoded)
    assert await CODEC.decode(encoded) == original  # what the workers read

    r = await codec_call(api.http, "decode", [*encoded, plain("never encrypted")], auth)
    assert r.status_code == 200, r.text
    assert [from_json(p) for p in r.json()["payloads"]] == [*original, plain("never encrypted")]


async def test_the_codec_server_wants_an_admin_key(api: Api, keys: dict[str, str]) -> None:
    [sealed] = await CODEC.encode([plain("Kiara Jones")])
    r = await codec_call(api.http, "decode", [sealed], {})
    assert_error(r, 401, "unauthenticated")
    assert r.headers["WWW-Authenticate"] == "Bearer" and "Kiara" not in r.text
    r = await codec_call(api.http, "decode", [sealed], {"Authorization": "Bearer nf_not_a_key"})
    assert_error(r, 401, "unauthenticated")
    for scope in ("crm:write", "reports:read", "events:write"):
        r = await codec_call(api.http, "decode", [sealed], {"Authorization": f"Bearer {keys[scope]}"})
        assert assert_error(r, 403, "forbidden")["details"] == {"required_scope": "admin"}
        r = await codec_call(api.http, "encode", [plain("x")], {"Authorization": f"Bearer {keys[scope]}"})
        assert_error(r, 403, "forbidden")


async def test_the_codec_server_names_what_it_cannot_decode(api: Api, keys: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {keys['admin']}"}
    [gone] = await EncryptionCodec(KeyRing.parse(key("retired-2024", 3))).encode([plain("Kiara Jones")])
    r = await codec_call(api.http, "decode", [gone], auth)
    err = assert_error(r, 422, "validation_error")
    assert "'retired-2024', which is not configured (configured: test)" in err["message"]
    body = {"payloads": [{"metadata": {"encoding": "not base64!"}, "data": ""}]}
    r = await api.http.post("/codec/decode", json=body, headers=auth)
    assert assert_error(r, 422, "validation_error")["details"] == {"field": "payloads.0.metadata.encoding"}


async def test_cors_answers_the_web_ui_on_codec_paths_only(api: Api, keys: dict[str, str]) -> None:
    preflight = {
        "Origin": UI_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    for what in ("decode", "encode"):
        r = await api.http.options(f"/codec/{what}", headers=preflight)
        assert r.status_code == 200, r.text
        assert r.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "x-namespace", "authorization"} <= allowed
    # The answer itself carries the origin, so the UI may read it (also a 401's).
    [sealed] = await CODEC.encode([plain("Kiara Jones")])
    auth = {"Authorization": f"Bearer {keys['admin']}", "Origin": UI_ORIGIN}
    r = await codec_call(api.http, "decode", [sealed], auth)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    r = await codec_call(api.http, "decode", [sealed], {"Origin": UI_ORIGIN})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    # Another origin gets no CORS; neither does the rest of the API, from any origin.
    r = await api.http.options("/codec/decode", headers={**preflight, "Origin": "https://evil.example"})
    assert r.status_code == 400 and "Access-Control-Allow-Origin" not in r.headers
    r = await codec_call(api.http, "decode", [sealed], {**auth, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await api.http.options("/v1/customers", headers=preflight)
    assert "Access-Control-Allow-Origin" not in r.headers
    admin_from_ui = {"Authorization": f"Bearer {keys['admin']}", "Origin": UI_ORIGIN}
    r = await api.http.get("/v1/outbox?limit=1", headers=admin_from_ui)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_a_browser_signs_in_once_and_the_web_ui_sends_the_cookie(
    client: Client, settings: Settings, task_queue: str, keys: dict[str, str]
) -> None:
    async with serve_app(settings, client, task_queue) as http:
        page = await http.get("/codec/sign-in")
        assert page.status_code == 200 and 'name="api_key"' in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        refused = await http.post("/codec/sign-in", data={"api_key": keys["reports:read"]})
        assert refused.status_code == 403 and COOKIE not in refused.headers.get("set-cookie", "")
        r = await http.post("/codec/sign-in", data={"api_key": keys["admin"]})
        assert r.status_code == 200 and "Include cross-origin credentials" in r.text
        cookie = r.headers["set-cookie"]
        attributes = {a.strip().lower() for a in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/codec"} <= attributes
        assert keys["admin"] not in cookie
        session = cookie.split(";")[0]  # needflow_codec=<id>
        http.cookies.clear()  # sent by hand below, as the browser would (path /codec only)

        [sealed] = await CODEC.encode([plain("Kiara Jones")])
        r = await codec_call(http, "decode", [sealed], {"Cookie": session, "Origin": UI_ORIGIN})
        assert r.status_code == 200, r.text
        assert [from_json(p) for p in r.json()["payloads"]] == [plain("Kiara Jones")]

        signed_out = await http.post("/codec/sign-out", headers={"Cookie": session})
        assert signed_out.status_code == 200
        http.cookies.clear()
        r = await codec_call(http, "decode", [sealed], {"Cookie": session})
        assert_error(r, 401, "unauthenticated")


# ---------------------------------------------------------------- histories


def _json_payloads(node: object) -> Iterator[dict]:
    """Every payload ({metadata, data}) in a history's JSON."""
    if isinstance(node, dict):
        if "data" in node and isinstance(node.get("metadata"), dict):
            yield node
            return
        for value in node.values():
            yield from _json_payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_payloads(value)


def _payloads(message: Message, field: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload inside a protobuf message, with the name of the field it is in."""
    if isinstance(message, Payload):
        yield field, message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            if descriptor.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    yield from _payloads(item, descriptor.name)
        elif isinstance(value, Message):
            yield from _payloads(value, descriptor.name)
        else:  # a repeated field
            for item in value:
                yield from _payloads(item, descriptor.name)


CUSTOMER_DATA = ["Kiara Jones", "+14155550123", "kiara@example.com", "Rachel Adams", "+12125550100"]


async def test_histories_hold_no_customer_data_in_the_clear(api: Api, client: Client) -> None:
    referral = await referral_converted(api)  # Kiara: her name, phone and e-mail
    mortgage = await mortgage_to_closed_won(api)  # Rachel signs with her name
    checking = await checking_to_opened(api)  # Rachel's SMS authorisation from her phone
    workflow_ids = [
        referral_workflow_id(referral["id"]),
        opportunity_workflow_id(referral["opportunity_id"]),
        opportunity_workflow_id(mortgage["id"]),
        opportunity_workflow_id(checking["id"]),
    ]
    # As anyone who can read the Temporal server sees them: a client without the codec.
    raw = Client(client.service_client, namespace=client.namespace)
    histories: list[WorkflowHistory] = [
        await within(raw.get_workflow_handle(w).fetch_history(), f"the history of {w}") for w in workflow_ids
    ]

    # The JSON export (`temporal workflow show -o json`) shows strings such as failure
    # messages as they are; a payload's bytes, in base64: the bytes are searched too.
    exported = "".join(h.to_json() for h in histories)
    raw_bytes = b"".join(e.SerializeToString() for h in histories for e in h.events)
    for value in CUSTOMER_DATA:
        assert value not in exported, f"{value!r} is in an exported history"
        assert value.encode() not in raw_bytes, f"{value!r} is in a history's bytes"

    # Every payload is sealed, with the test key, but the search attributes (ids and
    # stages, which the server indexes) and the SDK's own patch markers (a patch's id).
    found = [
        (f, p)
        for h in histories
        for e in h.events
        if e.marker_recorded_event_attributes.marker_name != "core_patch"
        for f, p in _payloads(e)
    ]
    sealed = [p for f, p in found if f not in ("indexed_fields", "search_attributes")]
    assert len(sealed) > 20
    open_ = [p for p in sealed if p.metadata.get("encoding") != ENCODING]
    assert open_ == [], f"payloads not encrypted: {open_[:3]}"
    assert {p.metadata[KEY_ID_METADATA] for p in sealed} == {b"test"}

    # Decrypted, they are all there: the search above would have found them.
    decoded = b"".join(p.SerializeToString() for p in await CODEC.decode(sealed))
    for value in CUSTOMER_DATA:
        assert value.encode() in decoded, f"{value!r} not in the decrypted histories"


# ---------------------------------------------------------------- the Temporal CLI


@pytest.fixture(scope="module")
def live_api(temporal_env: WorkflowEnvironment, settings: Settings) -> Iterator[LiveApi]:
    client = temporal_env.client
    live = LiveApi(settings, client.service_client.config.target_host, client.namespace)
    live.start()
    try:
        yield live
    finally:
        live.stop()


async def temporal_show(client: Client, workflow_id: str, *codec: str) -> str:
    """`temporal workflow show --output json`, with the codec options given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    proc = await asyncio.create_subprocess_exec(
        temporal_cli(),
        "workflow",
        "show",
        "--workflow-id",
        workflow_id,
        "--address",
        client.service_client.config.target_host,
        "--namespace",
        client.namespace,
        "--output",
        "json",
        *codec,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await within(proc.communicate(), "temporal workflow show", 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_temporal_cli_reads_histories_through_the_codec_server(
    api: Api, client: Client, live_api: LiveApi, keys: dict[str, str]
) -> None:
    referral = await referral_converted(api)
    workflow_id = referral_workflow_id(referral["id"])

    def payload_bytes(shown: str) -> bytes:
        payloads = [from_json(p) for p in _json_payloads(json.loads(shown))]
        assert len(payloads) > 10
        return b"".join(p.SerializeToString() for p in payloads)

    assert b"Kiara Jones" not in payload_bytes(await temporal_show(client, workflow_id))
    endpoint = f"{live_api.url}/codec"
    auth = f"Bearer {keys['admin']}"
    decoded = payload_bytes(
        await temporal_show(client, workflow_id, "--codec-endpoint", endpoint, "--codec-auth", auth)
    )
    assert b"Kiara Jones" in decoded and b"kiara@example.com" in decoded and ENCODING not in decoded
    # The codec server the CLI used is the real one: without the key it refuses.
    async with httpx.AsyncClient() as http:
        refused = await within(http.post(f"{endpoint}/decode", json={"payloads": []}), "decode")
    assert refused.status_code == 401
