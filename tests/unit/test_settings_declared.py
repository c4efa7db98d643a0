"""Each setting is declared once: its default is what an unset variable gives, and the README's table names it."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any, Final

import pytest

from resender.settings import Settings, source

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
REQUIRED: Final = {
    "OUTCOMES_TABLE": "communication-outcomes",
    "CAPILLARY_SECRET_ID": "capillary/credentials",
    "CAPILLARY_BASE_URL": "https://eu.api.capillarytech.com",
}
#: Rows of the README's table that Settings does not read: Powertools, the X-Ray switch and the AWS SDK do.
READ_BY_OTHERS: Final = frozenset(
    {"POWERTOOLS_LOG_LEVEL", "POWERTOOLS_SERVICE_NAME", "XRAY_SDK_TRACING", "AWS_ENDPOINT_URL"}
)
FIELDS: Final = dataclasses.fields(Settings)
DEFAULTED: Final = [each for each in FIELDS if each.default is not dataclasses.MISSING]


def variables() -> list[str]:
    """The environment variable of every field read from the environment, in declaration order."""
    return [found.variable for each in FIELDS if (found := source(each)) is not None]


def configuration_table_names(readme: str) -> set[str]:
    """The variables named in the first column of the table under the README's "Configuration" heading."""
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\|([^|]*)\|", section, re.MULTILINE)
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


@pytest.fixture(scope="module")
def defaults_only() -> Settings:
    return Settings.from_env(REQUIRED)


def test_the_three_contract_settings_are_the_only_ones_without_a_default(defaults_only: Settings) -> None:
    required = [each for each in FIELDS if each not in DEFAULTED]
    declared = {found.variable: each.name for each in required if (found := source(each)) is not None}

    assert all(each.default_factory is dataclasses.MISSING for each in FIELDS)
    assert set(declared) == set(REQUIRED)
    assert len(required) == len(REQUIRED)
    for variable, name in declared.items():
        assert getattr(defaults_only, name) == REQUIRED[variable]


@pytest.mark.parametrize("declared", DEFAULTED, ids=[each.name for each in DEFAULTED])
def test_each_default_is_what_an_unset_variable_gives(
    declared: dataclasses.Field[Any], defaults_only: Settings
) -> None:
    loaded = getattr(defaults_only, declared.name)

    assert loaded == declared.default
    assert type(loaded) is type(declared.default)


def test_no_two_fields_read_the_same_variable() -> None:
    repeated = [variable for variable, count in Counter(variables()).items() if count > 1]

    assert len(variables()) == len(FIELDS)
    assert repeated == []


def test_the_table_reader_finds_every_name_of_a_row_and_only_the_configuration_table() -> None:
    readme = (
        "# Title\n\n| Variable | Default |\n|---|---|\n| `ELSEWHERE` | `1` |\n\n"
        "## Configuration\n\n| Variable | Default |\n|---|---|\n| `ONE` | `2` |\n| `TWO` / `THREE` | `x` |\n\n"
        "## Documentation\n\n| `AFTER` | `3` |\n"
    )

    assert configuration_table_names(readme) == {"ONE", "TWO", "THREE"}


def test_the_readme_table_names_every_declared_variable_and_no_other_setting() -> None:
    table = configuration_table_names(README.read_text(encoding="utf-8"))
    declared = set(variables())

    assert {"OUTCOMES_TABLE", "RESEND_RATE_PER_MINUTE", "DEFERRAL_MAX_AGE_SECONDS"} <= declared
    assert declared - table == set(), "declared by Settings, missing from the README's table"
    assert table - declared == READ_BY_OTHERS, "in the README's table, but not a Settings variable"
