"""Processes are data: the shipped ones load as PRODUCT.md describes them, and a malformed
file stops the service at start with a message naming the file, the stage and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from api.app import create_app
from config import PROJECT_ROOT
from domain.process import ProcessError, load_catalog
from domain.types import Product
from tests.helpers import IsolatedSettings

SHIPPED = PROJECT_ROOT / "processes"


def test_shipped_processes_match_the_product() -> None:
    catalog = load_catalog(SHIPPED)
    mortgage = catalog.latest(Product.mortgage)
    assert mortgage is not None
    assert [(s.key, s.probability, s.entry.kind) for s in mortgage.stages] == [
        ("interested", 10, "create"),
        ("searching", 20, "manual"),
        ("applied", 50, "event"),
        ("approved", 80, "event"),
        ("closed_won", 100, "signature"),
    ]
    assert mortgage.stage("searching").evidence == ("realtor",)
    assert mortgage.creation_requires == ("amount",)
    checking = catalog.latest(Product.checking)
    assert checking is not None
    assert [s.key for s in checking.stages] == ["interested", "authorised", "opened"]
    assert checking.stage("authorised").consent == "sms"
    for product in (Product.insurance, Product.wealth):
        p = catalog.latest(product)
        assert p is not None and [s.key for s in p.stages] == ["interested", "proposal", "closed_won"]
    assert catalog.latest(Product.savings) is None


def _write(tmp_path: Path, mutate: Callable[[dict], object]) -> Path:
    raw = yaml.safe_load((SHIPPED / "mortgage.v1.yaml").read_text())
    mutate(raw)
    (tmp_path / "mortgage.v1.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path


def test_a_bad_field_names_file_stage_and_field(tmp_path: Path) -> None:
    _write(tmp_path, lambda raw: raw["stages"][1].update(probability=120))
    with pytest.raises(ProcessError) as err:
        load_catalog(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'mortgage.v1.yaml'}: stage 'searching' (#2), field 'probability': "
        "Input should be less than or equal to 100"
    )


@pytest.mark.parametrize(
    ("mutate", "where", "expected"),
    [
        (
            lambda raw: raw["stages"][2]["entry"].pop("event"),
            "stage 'applied' (#3), field 'entry'",
            "an entry of kind 'event' must name its event",
        ),
        (
            lambda raw: raw["stages"][2]["entry"].update(event="mortgage.unheard_of"),
            "stage 'applied' (#3), field 'entry.event'",
            "Input should be 'mortgage.application_submitted'",
        ),
        (
            lambda raw: raw["stages"][3].pop("request_signature"),
            "process",
            "stage 'closed_won' is entered by signature, so the stage before it must request one",
        ),
        (lambda raw: raw["stages"].pop(0), "process", "the first stage must be entered by 'create'"),
        (
            lambda raw: raw["stages"][1].update(key="applied"),
            "process",
            "stage keys must be unique, got ['interested', 'applied', 'applied', 'approved', 'closed_won']",
        ),
        (
            lambda raw: raw["stages"][1].update(colour="red"),
            "stage 'searching' (#2), field 'colour'",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_incoherent_processes_are_refused(
    tmp_path: Path, mutate: Callable[[dict], object], where: str, expected: str
) -> None:
    _write(tmp_path, mutate)
    with pytest.raises(ProcessError) as err:
        load_catalog(tmp_path)
    text = str(err.value)
    # The file, the stage (or the process as a whole) and the field; then the wording.
    assert text.startswith(f"{tmp_path / 'mortgage.v1.yaml'}: {where}: "), text
    assert expected in text, text


def test_the_api_refuses_to_start_on_a_malformed_process(tmp_path: Path) -> None:
    _write(tmp_path, lambda raw: raw["stages"][1].update(probability="high"))
    with pytest.raises(ProcessError) as err:
        create_app(IsolatedSettings(processes_dir=tmp_path, database_url="sqlite:///:memory:"))
    assert str(err.value).startswith(f"{tmp_path / 'mortgage.v1.yaml'}: stage 'searching' (#2), field 'probability': ")


def test_a_version_defined_in_two_files_names_both(tmp_path: Path) -> None:
    for name in ("mortgage.v1.yaml", "mortgage.copy.yaml"):
        (tmp_path / name).write_text((SHIPPED / "mortgage.v1.yaml").read_text())
    with pytest.raises(ProcessError) as err:
        load_catalog(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'mortgage.v1.yaml'}: field 'version': mortgage version 1 is defined in mortgage.copy.yaml too"
    )
