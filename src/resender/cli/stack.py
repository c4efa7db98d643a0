"""A deployed stack's own answer to "which table, queues, secret and Capillary host?" (``--stack-name``).

Operators otherwise copy five values from the stack's outputs by hand. Two read-only calls give them all:
CloudFormation's outputs name the resources, and the function's configuration holds the settings it runs
with (base URL, id path, policy), so the operator tool sees exactly what the function sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from resender.settings import ConfigurationError

if TYPE_CHECKING:
    import boto3

#: Stack output → the environment variable the function and the operator tool read for the same value.
OUTPUT_VARIABLES: Final = {
    "OutcomesTableName": "OUTCOMES_TABLE",
    "QueueUrl": "SOURCE_QUEUE_URL",
    "DeadLetterQueueUrl": "DEAD_LETTER_QUEUE_URL",
    "SecretArn": "CAPILLARY_SECRET_ID",
    "TopicArn": "FAILURE_TOPIC_ARN",
}
FUNCTION_OUTPUT: Final = "FunctionName"
# Set by Lambda itself or by the SDK: never copied into the operator's environment.
_RESERVED_PREFIXES: Final = ("AWS_", "_", "LAMBDA_")


def stack_environment(
    session: boto3.session.Session, stack_name: str, endpoint_url: str | None
) -> dict[str, str]:
    """The function's settings for ``stack_name``: its outputs, then its function's environment."""
    cloudformation: Any = session.client("cloudformation", endpoint_url=endpoint_url)
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        raise ConfigurationError(
            f"--stack-name {stack_name}: {_explain(error, session, 'DescribeStacks')}"
        ) from None
    except BotoCoreError as error:
        raise ConfigurationError(f"--stack-name {stack_name}: DescribeStacks failed ({error})") from None
    outputs = {
        str(output["OutputKey"]): str(output["OutputValue"])
        for stack in stacks[:1]
        for output in stack.get("Outputs", [])
        if "OutputKey" in output and "OutputValue" in output
    }
    values: dict[str, str] = {}
    function_name = outputs.get(FUNCTION_OUTPUT)
    if function_name:
        values.update(_function_environment(session, function_name, endpoint_url))
    # The outputs name the stack's own resources, so they win over a stale copy in the function's settings.
    values.update({variable: outputs[key] for key, variable in OUTPUT_VARIABLES.items() if key in outputs})
    missing = [key for key in ("OutcomesTableName", FUNCTION_OUTPUT) if key not in outputs]
    if missing:
        raise ConfigurationError(
            f"--stack-name {stack_name}: the stack has no output {' or '.join(missing)}; "
            "is it a resender stack (template.yaml)?"
        )
    return values


def _function_environment(
    session: boto3.session.Session, function_name: str, endpoint_url: str | None
) -> dict[str, str]:
    lambda_client: Any = session.client("lambda", endpoint_url=endpoint_url)
    try:
        configuration = lambda_client.get_function_configuration(FunctionName=function_name)
    except ClientError as error:
        explained = _explain(error, session, "GetFunctionConfiguration")
        raise ConfigurationError(f"reading the function {function_name}: {explained}") from None
    except BotoCoreError as error:
        raise ConfigurationError(f"reading the function {function_name} failed ({error})") from None
    variables = configuration.get("Environment", {}).get("Variables", {})
    return {
        str(name): str(value)
        for name, value in variables.items()
        if not str(name).startswith(_RESERVED_PREFIXES)
    }


def _explain(error: ClientError, session: boto3.session.Session, operation: str) -> str:
    details = error.response.get("Error", {})
    code = details.get("Code", "Unknown")
    message = details.get("Message") or ""
    said = f"{code}: {message}" if message else code
    return f"{operation} failed in {session.region_name or 'no region'} ({said})"
