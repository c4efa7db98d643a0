"""The handler imports only what an invocation uses: no X-Ray SDK unless asked for, no boto3 (s3transfer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = "import json, sys; import resender.app; print(json.dumps(sorted(sys.modules)))"


def modules_after_importing_the_handler(**environment: str) -> set[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("XRAY_")}
    env.update(environment)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(done.stdout))


def test_the_handler_does_not_import_the_xray_sdk_or_boto3_by_default() -> None:
    loaded = modules_after_importing_the_handler()

    assert "resender.app" in loaded
    assert not {name for name in loaded if name.startswith(("aws_xray_sdk", "boto3", "s3transfer"))}


@pytest.mark.parametrize("value", ["true", "TRUE", " true "])
def test_sdk_tracing_is_opt_in(value: str) -> None:
    loaded = modules_after_importing_the_handler(XRAY_SDK_TRACING=value)

    assert "aws_xray_sdk.core" in loaded


def test_the_operator_tool_and_the_local_stack_are_not_imported_by_the_handler() -> None:
    loaded = modules_after_importing_the_handler()

    assert not {name for name in loaded if name.startswith(("resender.local", "resender.cli", "moto"))}
