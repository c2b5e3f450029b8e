"""How every process talks to Temporal: one data converter and one way to connect.

The worker, the API, the starter, the replayer and the tests all use `DATA_CONVERTER`,
so a payload codec (encryption of customer data in histories) is added here once and
reaches every reader and writer of history alike.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from config import Settings

#: Workflow inputs, update arguments and results are pydantic models.
DATA_CONVERTER: DataConverter = pydantic_data_converter


async def connect(settings: Settings) -> Client:
    """A client of the cluster the settings name, with needflow's data converter."""
    return await Client.connect(
        settings.resolved_temporal_address, namespace=settings.namespace, data_converter=DATA_CONVERTER
    )
