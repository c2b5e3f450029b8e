"""How every process talks to Temporal: one data converter and one way to connect.

The worker, the API, the starter, the replayer and the tests all use `DATA_CONVERTER`,
so the payload codec that encrypts customer data in histories (`workflows/codec.py`) is
added here once and reaches every reader and writer of history alike.

`CODEC` holds no key until it is given the process's keys: `connect` gives it the
settings' (NEEDFLOW_CODEC_KEYS, and refuses to connect without them); the tests give it
their fixed test key (tests/conftest.py). Until then it decrypts nothing and encrypts
nothing, so no payload is ever written in the clear by a process that forgot its keys.
"""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from config import Settings
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


async def connect(settings: Settings) -> Client:
    """A client of the cluster the settings name, with needflow's data converter holding
    the settings' payload keys (a ValueError naming NEEDFLOW_CODEC_KEYS when there are none)."""
    use_codec_keys(settings.codec_keyring())
    return await Client.connect(
        settings.resolved_temporal_address, namespace=settings.namespace, data_converter=DATA_CONVERTER
    )
