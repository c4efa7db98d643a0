"""Checks on the deployable stack: template.yaml, samconfig.toml and the sample events in events/.

The template is read with cfn-lint's own YAML decoder, so short intrinsic tags (!Ref, !Sub, !If, ...) arrive in
their long JSON form (``{"Ref": ...}``, ``{"Fn::Sub": ...}``). Names the code relies on are imported from the code
(metric names) or parsed from it (environment variables), never copied here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from resender.observability import METRICS_NAMESPACE, SDK_TRACING_ENV, SERVICE_NAME, MetricName
from resender.settings import Settings, minimum_resend_seconds, source

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
SAMCONFIG_PATH = ROOT / "samconfig.toml"
EVENTS_DIR = ROOT / "events"

CONTRACT_REQUIRED_ENV = {
    "OUTCOMES_TABLE",
    "CAPILLARY_SECRET_ID",
    "CAPILLARY_BASE_URL",
    "DEAD_LETTER_QUEUE_URL",
}
SOURCE_ARN = "arn:aws:sqs:us-east-1:123456789012:communication-failures"
SQS_RECORD_KEYS = {
    "messageId",
    "receiptHandle",
    "body",
    "attributes",
    "messageAttributes",
    "md5OfBody",
    "eventSource",
    "eventSourceARN",
    "awsRegion",
}
SQS_ATTRIBUTE_KEYS = {
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
}
EVENT_FILES = [
    "sqs-plain.json",
    "sqs-sns-envelope.json",
    "sqs-raw-sns.json",
    "sns-direct.json",
    "sqs-eventbridge.json",
    "sqs-batch-duplicates.json",
    "sqs-poison.json",
    "sqs-policy-reason.json",
    "sqs-policy-channel.json",
    "sqs-policy-age.json",
    "sqs-policy-skip-when.json",
    "sqs-second-org.json",
]
# Only X-Ray's write actions are granted on "*": they accept no other resource.
XRAY_MANAGED_POLICY = "AWSXRayDaemonWriteAccess"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    found: dict[str, Any] = cfn_yaml.load(str(TEMPLATE_PATH))
    return found


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = template["Resources"]
    return found


@pytest.fixture(scope="module")
def parameters(template: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = template["Parameters"]
    return found


@pytest.fixture(scope="module")
def function(resources: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = resources["ResenderFunction"]["Properties"]
    return found


@pytest.fixture(scope="module")
def env_vars(function: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = function["Environment"]["Variables"]
    return found


@pytest.fixture(scope="module")
def sqs_event(function: dict[str, Any]) -> dict[str, Any]:
    sqs_events = [event for event in function["Events"].values() if event["Type"] == "SQS"]
    assert len(sqs_events) == 1
    found: dict[str, Any] = sqs_events[0]["Properties"]
    return found


@pytest.fixture(scope="module")
def role_statements(resources: dict[str, Any], function: dict[str, Any]) -> list[dict[str, Any]]:
    assert function["Role"] == {"Fn::GetAtt": ["ResenderRole", "Arn"]}
    role = resources["ResenderRole"]["Properties"]
    return [statement for policy in role["Policies"] for statement in _statements(policy["PolicyDocument"])]


@pytest.fixture(scope="module")
def dashboard(resources: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    dashboards = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    assert len(dashboards) == 1
    return _render_sub(dashboards[0]["Properties"]["DashboardBody"], template)


@pytest.fixture(scope="module")
def samconfig() -> dict[str, Any]:
    with SAMCONFIG_PATH.open("rb") as handle:
        return tomllib.load(handle)


# ------------------------------------------------------------------------------------------------ helpers
def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _statements(document: Any) -> list[dict[str, Any]]:
    """Every IAM statement inside a node, including both branches of an Fn::If."""
    return [node for node in _walk(document) if isinstance(node, dict) and "Effect" in node]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _render_sub(value: Any, template: dict[str, Any]) -> dict[str, Any]:
    """Resolve an Fn::Sub JSON body with stand-in values (numbers for Number parameters) and parse it."""
    sub = value["Fn::Sub"]
    text, variables = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
    params = template["Parameters"]

    def stand_in(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables or params.get(name, {}).get("Type") == "Number":
            return "1"
        if name in params or name.startswith("AWS::") or name.split(".")[0] in template["Resources"]:
            return f"stand-in-{name}"
        raise AssertionError(f"${{{name}}} in the dashboard names nothing in the template")

    rendered: dict[str, Any] = json.loads(re.sub(r"\$\{([^}!]+)\}", stand_in, text))
    return rendered


def _metric_rows(widget: dict[str, Any]) -> list[tuple[list[str], dict[str, Any]]]:
    """The metric rows of a widget, with the "." shorthand expanded: (strings, options)."""
    rows: list[tuple[list[str], dict[str, Any]]] = []
    previous: list[str] = []
    for row in widget.get("properties", {}).get("metrics", []):
        strings = [item for item in row if isinstance(item, str)]
        options = next((item for item in row if isinstance(item, dict)), {})
        if not strings:  # a math expression
            continue
        strings = [previous[i] if s == "." and i < len(previous) else s for i, s in enumerate(strings)]
        rows.append((strings, options))
        previous = strings
    return rows


def _own_metric(strings: list[str]) -> tuple[str, dict[str, str]] | None:
    namespace, name, *dims = strings
    if namespace != METRICS_NAMESPACE:
        return None
    return name, dict(zip(dims[::2], dims[1::2], strict=True))


def _settings_env_names() -> tuple[set[str], set[str]]:
    """(every name Settings reads, the names it requires), from the declarations of its fields."""
    read: set[str] = set()
    required: set[str] = set()
    for each in dataclasses.fields(Settings):
        found = source(each)
        if found is None:
            continue
        read.add(found.variable)
        if each.default is dataclasses.MISSING and each.default_factory is dataclasses.MISSING:
            required.add(found.variable)
    return read, required


def _condition(name: str, template: dict[str, Any], values: dict[str, str]) -> bool:
    def evaluate(node: Any) -> Any:
        if isinstance(node, dict):
            (key, arg), *_ = node.items()
            if key == "Ref":
                return values[arg]
            if key == "Fn::Equals":
                return evaluate(arg[0]) == evaluate(arg[1])
            if key == "Fn::Not":
                return not evaluate(arg[0])
            if key == "Condition":
                return _condition(arg, template, values)
            raise AssertionError(f"unsupported condition function {key}")
        return str(node)

    return bool(evaluate(template["Conditions"][name]))


def _resolve(node: Any, template: dict[str, Any], values: dict[str, str]) -> Any:
    """A scalar for an environment value, given parameter values; None for AWS::NoValue."""
    if not isinstance(node, dict):
        return str(node)
    (key, arg), *_ = node.items()
    if key == "Ref":
        if arg == "AWS::NoValue":
            return None
        if arg in template["Parameters"]:
            return values[arg]
        return f"{arg}-physical-id"
    if key == "Fn::If":
        branch = arg[1] if _condition(arg[0], template, values) else arg[2]
        return _resolve(branch, template, values)
    raise AssertionError(f"unexpected intrinsic {key} in an environment variable")


def _minimum_resend_seconds(capillary_timeout_seconds: float) -> float:
    settings = Settings("outcomes", "secret", "https://eu.api.capillarytech.com", capillary_timeout_seconds)
    return minimum_resend_seconds(settings)


def _failed_assertions(template: dict[str, Any], values: dict[str, str]) -> list[str]:
    """The AssertDescription of every Rules assertion these parameter values break, as CloudFormation does."""

    def evaluate(node: Any) -> Any:
        if isinstance(node, list):
            return [evaluate(item) for item in node]
        if not isinstance(node, dict):
            return str(node)
        ((function, arg),) = node.items()
        if function == "Ref":
            return values[arg]
        if function == "Fn::Equals":
            left, right = evaluate(arg)
            return left == right
        if function == "Fn::Contains":
            options, value = evaluate(arg)
            return value in options
        if function == "Fn::EachMemberIn":
            members, options = evaluate(arg)
            return all(member in options for member in members)
        if function == "Fn::And":
            return all(evaluate(arg))
        if function == "Fn::Or":
            return any(evaluate(arg))
        if function == "Fn::Not":
            return not evaluate(arg)[0]
        raise AssertionError(f"rule function {function} is not evaluated by this test")

    failed = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"]):
            continue
        failed += [a["AssertDescription"] for a in rule["Assertions"] if not evaluate(a["Assert"])]
    return failed


def _parameter_values(parameters: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    values = {name: str(spec["Default"]) for name, spec in parameters.items() if "Default" in spec}
    values.update(overrides)
    return values


def _violations(name: str, value: str, spec: dict[str, Any]) -> list[str]:
    """What is wrong with a parameter value, by the parameter's own constraints (as CloudFormation checks them)."""
    problems = []
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        problems.append(f"{name}={value!r} does not match {spec['AllowedPattern']}")
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        problems.append(f"{name}={value!r} is not one of {spec['AllowedValues']}")
    if spec.get("Type") == "Number":
        number = float(value)
        if "MinValue" in spec and number < float(spec["MinValue"]):
            problems.append(f"{name}={value} is below {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            problems.append(f"{name}={value} is above {spec['MaxValue']}")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        problems.append(f"{name}={value!r} is shorter than {spec['MinLength']}")
    return problems


def _overrides(samconfig: dict[str, Any], environment: str) -> dict[str, str]:
    raw = samconfig[environment]["deploy"]["parameters"]["parameter_overrides"]
    items = raw if isinstance(raw, list) else raw.split()
    return dict(item.split("=", 1) for item in items)


def _load_event(name: str) -> Any:
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def _assert_sqs_records(event: Any, count: int) -> list[dict[str, Any]]:
    assert set(event) == {"Records"}
    records: list[dict[str, Any]] = event["Records"]
    assert len(records) == count
    for record in records:
        assert set(record) == SQS_RECORD_KEYS
        uuid.UUID(record["messageId"])
        assert record["receiptHandle"]
        assert isinstance(record["body"], str)
        assert set(record["attributes"]) == SQS_ATTRIBUTE_KEYS
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert record["attributes"]["SentTimestamp"].isdigit()
        assert record["attributes"]["ApproximateFirstReceiveTimestamp"].isdigit()
        assert record["messageAttributes"] == {}
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"] == SOURCE_ARN
        assert record["awsRegion"] == "us-east-1"
    assert len({r["messageId"] for r in records}) == count
    assert len({r["receiptHandle"] for r in records}) == count
    return records


# ------------------------------------------------------------------------------------------------ lint
def test_cfn_lint_reports_nothing() -> None:
    executable = Path(sys.executable).with_name("cfn-lint")
    if not executable.exists():
        found = shutil.which("cfn-lint")
        assert found, "cfn-lint is not installed next to the interpreter nor on PATH"
        executable = Path(found)
    result = subprocess.run(
        [str(executable), str(TEMPLATE_PATH)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


# ------------------------------------------------------------------------------------------------ function
def test_function_matches_the_code_contract(function: dict[str, Any], resources: dict[str, Any]) -> None:
    assert resources["ResenderFunction"]["Type"] == "AWS::Serverless::Function"
    assert function["Handler"] == "resender.app.lambda_handler"
    assert function["CodeUri"] == "src/"
    assert function["Runtime"] in {"python3.12", "python3.13"}
    assert function["Tracing"] == "Active"
    assert (ROOT / "src" / "requirements.txt").is_file()


def test_visibility_timeout_is_at_least_six_times_the_function_timeout(
    template: dict[str, Any], resources: dict[str, Any], parameters: dict[str, Any], function: dict[str, Any]
) -> None:
    timeout = parameters["FunctionTimeout"]
    assert function["Timeout"] == {"Ref": "FunctionTimeout"}
    assert resources["SourceQueue"]["Properties"]["VisibilityTimeout"] == {
        "Fn::FindInMap": ["TimeoutSettings", {"Ref": "FunctionTimeout"}, "VisibilityTimeout"]
    }
    allowed = [int(v) for v in timeout["AllowedValues"]]
    assert int(timeout["Default"]) in allowed
    mapping = template["Mappings"]["TimeoutSettings"]
    assert {int(key) for key in mapping} == set(allowed)
    for seconds in allowed:
        entry = mapping[str(seconds)]
        assert int(entry["VisibilityTimeout"]) >= 6 * seconds
        assert int(entry["VisibilityTimeout"]) <= 43_200
        assert int(entry["TimeoutMillis"]) == 1000 * seconds
        assert seconds <= 900


def test_capillary_timeout_leaves_room_inside_the_function_timeout(parameters: dict[str, Any]) -> None:
    timeout = float(parameters["CapillaryTimeoutSeconds"]["Default"])
    assert int(parameters["FunctionTimeout"]["Default"]) >= _minimum_resend_seconds(timeout)


def test_rules_accept_exactly_the_timeouts_that_leave_room_for_one_resend(
    template: dict[str, Any], parameters: dict[str, Any]
) -> None:
    """Every allowed pair: accepted by the Rules if and only if one worst-case resend fits the function."""
    capillary_timeouts = [str(v) for v in parameters["CapillaryTimeoutSeconds"]["AllowedValues"]]
    function_timeouts = [str(v) for v in parameters["FunctionTimeout"]["AllowedValues"]]
    defaults = _parameter_values(parameters, {"CapillaryBaseUrl": "https://eu.api.capillarytech.com"})
    for capillary in capillary_timeouts:
        needed = _minimum_resend_seconds(float(capillary))
        accepted = []
        for function in function_timeouts:
            values = {**defaults, "CapillaryTimeoutSeconds": capillary, "FunctionTimeout": function}
            failed = _failed_assertions(template, values)
            fits = int(function) >= needed
            assert (not failed) == fits, (capillary, function, needed, failed)
            if fits:
                accepted.append(function)
            else:
                assert all("FunctionTimeout" in d and "CapillaryTimeoutSeconds" in d for d in failed), failed
        assert accepted, f"CapillaryTimeoutSeconds={capillary} admits no FunctionTimeout: drop it"


def test_every_refusal_says_what_to_change(template: dict[str, Any], parameters: dict[str, Any]) -> None:
    function_timeouts = sorted(int(v) for v in parameters["FunctionTimeout"]["AllowedValues"])
    rules = template["Rules"]
    assert rules, "the template must refuse timeouts that leave no room for a resend"
    for name, rule in rules.items():
        (capillary,) = [str(arg) for arg in rule["RuleCondition"]["Fn::Equals"] if not isinstance(arg, dict)]
        smallest = min(t for t in function_timeouts if t >= _minimum_resend_seconds(float(capillary)))
        for assertion in rule["Assertions"]:
            description = assertion["AssertDescription"]
            assert f"CapillaryTimeoutSeconds={capillary}" in description, name
            assert f"set FunctionTimeout to {smallest} or more" in description, name


def test_the_shipped_parameter_sets_pass_the_rules(
    template: dict[str, Any], parameters: dict[str, Any], samconfig: dict[str, Any]
) -> None:
    base = {"CapillaryBaseUrl": "https://eu.api.capillarytech.com"}
    for overrides in (base, *(_overrides(samconfig, name) for name in ("default", "staging", "prod"))):
        assert _failed_assertions(template, _parameter_values(parameters, overrides)) == []


def test_sqs_event_source_reports_batch_item_failures(sqs_event: dict[str, Any]) -> None:
    assert sqs_event["Queue"] == {"Fn::GetAtt": ["SourceQueue", "Arn"]}
    assert sqs_event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert sqs_event["BatchSize"] == {"Ref": "BatchSize"}
    assert sqs_event["MaximumBatchingWindowInSeconds"] == {"Ref": "MaximumBatchingWindowInSeconds"}


def test_maximum_concurrency_is_a_parameter_of_at_least_two(
    sqs_event: dict[str, Any], parameters: dict[str, Any]
) -> None:
    assert sqs_event["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "MaximumConcurrency"}
    spec = parameters["MaximumConcurrency"]
    assert int(spec["MinValue"]) >= 2
    assert int(spec["Default"]) >= 2
    assert int(spec["MaxValue"]) <= 1000


# ------------------------------------------------------------------------------------------------ environment
def test_env_var_names_are_the_ones_the_code_reads(env_vars: dict[str, Any]) -> None:
    read, required = _settings_env_names()
    assert {"OUTCOMES_TABLE", "CAPILLARY_SECRET_ID", "CAPILLARY_BASE_URL", "MAX_RESEND_DEPTH"} <= read
    own = {name for name in env_vars if not name.startswith(("POWERTOOLS_", "AWS_"))}
    # Read at import by resender.observability, before any setting: whether to load the X-Ray SDK at all.
    own.discard(SDK_TRACING_ENV)
    assert own - read == set(), "set in the template but never read by resender.settings"
    assert (required | CONTRACT_REQUIRED_ENV) - set(env_vars) == set(), "required by the code, missing"


def test_env_values_point_at_the_stack_resources(env_vars: dict[str, Any]) -> None:
    assert env_vars["OUTCOMES_TABLE"] == {"Ref": "OutcomesTable"}
    assert env_vars["DEAD_LETTER_QUEUE_URL"] == {"Ref": "DeadLetterQueue"}
    assert env_vars["CAPILLARY_BASE_URL"] == {"Ref": "CapillaryBaseUrl"}
    assert env_vars["CAPILLARY_SECRET_ID"] == {
        "Fn::If": ["CreateSecret", {"Ref": "CapillaryPlaceholderSecret"}, {"Ref": "CapillarySecretArn"}]
    }
    # The service dimension is the stack's name, so two stacks in one account keep their figures apart.
    assert env_vars["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert env_vars["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    assert env_vars["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}


@pytest.mark.parametrize("environment", ["template defaults", "default", "staging", "prod"])
def test_the_code_accepts_the_deployed_settings(
    environment: str,
    template: dict[str, Any],
    parameters: dict[str, Any],
    env_vars: dict[str, Any],
    samconfig: dict[str, Any],
) -> None:
    overrides = {"CapillaryBaseUrl": "https://eu.api.capillarytech.com"}
    if environment != "template defaults":
        overrides = _overrides(samconfig, environment)
    values = _parameter_values(parameters, overrides)
    environ = {name: _resolve(value, template, values) for name, value in env_vars.items()}
    environ = {name: value for name, value in environ.items() if value is not None}
    assert "AWS_ENDPOINT_URL" not in environ, "the endpoint override must be absent in AWS"
    settings = Settings.from_env(environ)
    assert settings.capillary_base_url.startswith("https://")
    assert settings.dead_letter_queue_url


def test_parameter_defaults_satisfy_their_own_constraints(parameters: dict[str, Any]) -> None:
    problems = [
        problem
        for name, spec in parameters.items()
        if "Default" in spec
        for problem in _violations(name, str(spec["Default"]), spec)
    ]
    assert problems == []
    assert (
        re.fullmatch(parameters["CapillaryBaseUrl"]["AllowedPattern"], "http://eu.api.capillarytech.com")
        is None
    )


# ------------------------------------------------------------------------------------------------ queues, topic
def test_queues_are_encrypted_with_a_redrive_policy(
    resources: dict[str, Any], parameters: dict[str, Any]
) -> None:
    source = resources["SourceQueue"]["Properties"]
    dlq = resources["DeadLetterQueue"]["Properties"]
    for queue in (source, dlq):
        assert queue.get("SqsManagedSseEnabled") is True or queue.get("KmsMasterKeyId")
    assert source["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert source["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    assert int(parameters["MaxReceiveCount"]["MinValue"]) >= 3
    assert int(parameters["MaxReceiveCount"]["Default"]) == 5
    assert int(dlq["MessageRetentionPeriod"]) == 1_209_600
    assert int(source["MessageRetentionPeriod"]) >= 4 * 24 * 3600
    assert int(source["MessageRetentionPeriod"]) < int(dlq["MessageRetentionPeriod"])


def test_topic_is_encrypted_and_subscribed(resources: dict[str, Any], parameters: dict[str, Any]) -> None:
    topic = resources["FailureTopic"]
    assert topic["Condition"] == "CreateTopic"
    assert topic["Properties"]["KmsMasterKeyId"]
    subscription = resources["FailureSubscription"]["Properties"]
    topic_arn = {"Fn::If": ["CreateTopic", {"Ref": "FailureTopic"}, {"Ref": "ExistingTopicArn"}]}
    assert subscription["TopicArn"] == topic_arn
    assert subscription["Protocol"] == "sqs"
    assert subscription["Endpoint"] == {"Fn::GetAtt": ["SourceQueue", "Arn"]}
    assert subscription["RawMessageDelivery"] == {"Ref": "RawMessageDelivery"}
    assert set(parameters["RawMessageDelivery"]["AllowedValues"]) == {"true", "false"}


def test_queue_policies_admit_only_the_topic(resources: dict[str, Any]) -> None:
    topic_arn = {"Fn::If": ["CreateTopic", {"Ref": "FailureTopic"}, {"Ref": "ExistingTopicArn"}]}
    policies = {
        name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::SQS::QueuePolicy"
    }
    assert {q["Ref"] for p in policies.values() for q in p["Queues"]} == {"SourceQueue", "DeadLetterQueue"}
    for policy in policies.values():
        (queue,) = policy["Queues"]
        for statement in _statements(policy["PolicyDocument"]):
            assert statement["Resource"] == {"Fn::GetAtt": [queue["Ref"], "Arn"]}
            if statement["Effect"] == "Allow":
                assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
                assert statement["Action"] == "sqs:SendMessage"
                assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": topic_arn}}
            else:
                assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# ------------------------------------------------------------------------------------------------ table, secret
def test_outcomes_table_contract(resources: dict[str, Any]) -> None:
    table = resources["OutcomesTable"]
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "messageId", "KeyType": "HASH"}]
    types = {a["AttributeName"]: a["AttributeType"] for a in props["AttributeDefinitions"]}
    assert types == {"messageId": "N", "status": "S", "updatedAt": "S"}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    (index,) = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "byStatus"
    assert index["KeySchema"] == [
        {"AttributeName": "status", "KeyType": "HASH"},
        {"AttributeName": "updatedAt", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "ALL"}


def test_pacing_table_has_a_string_org_key_and_no_ttl(resources: dict[str, Any]) -> None:
    table = resources["PacingTable"]
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "org", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "org", "AttributeType": "S"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    # A TTL could delete a bucket or an open breaker while its org is being paced.
    assert "TimeToLiveSpecification" not in props
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert "GlobalSecondaryIndexes" not in props


def test_pacing_is_on_in_the_deployed_stack_and_the_rate_is_optional(
    env_vars: dict[str, Any], parameters: dict[str, Any], template: dict[str, Any]
) -> None:
    assert env_vars["PACING_TABLE"] == {"Ref": "PacingTable"}
    assert env_vars["RESEND_RATE_PER_MINUTE"] == {
        "Fn::If": ["HasResendRate", {"Ref": "ResendRatePerMinute"}, {"Ref": "AWS::NoValue"}]
    }
    rate = parameters["ResendRatePerMinute"]
    assert rate["Default"] == ""
    for accepted in ("", "100", "95.5"):
        assert re.fullmatch(rate["AllowedPattern"], accepted), accepted
    for refused in ("0", "-5", "ten", "100/min"):
        assert re.fullmatch(rate["AllowedPattern"], refused) is None, refused
    values = _parameter_values(parameters, {"CapillaryBaseUrl": "https://eu.api.capillarytech.com"})
    for given, expected in (("", None), ("90", 90.0)):
        environ = {
            name: _resolve(value, template, {**values, "ResendRatePerMinute": given})
            for name, value in env_vars.items()
        }
        settings = Settings.from_env({n: v for n, v in environ.items() if v is not None})
        assert settings.pacing_table == "PacingTable-physical-id"
        assert settings.resend_rate_per_minute == expected


def test_only_the_pacing_actions_reach_the_pacing_table(role_statements: list[dict[str, Any]]) -> None:
    on_pacing = [
        statement
        for statement in role_statements
        if statement["Resource"] == {"Fn::GetAtt": ["PacingTable", "Arn"]}
    ]
    assert [_as_list(statement["Action"]) for statement in on_pacing] == [
        ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    ]


def test_dashboard_shows_resends_per_minute_against_the_limit(
    dashboard: dict[str, Any], resources: dict[str, Any]
) -> None:
    (widget,) = [w for w in dashboard["widgets"] if "against the limit" in w["properties"].get("title", "")]
    names = {strings[1] for strings, _ in _metric_rows(widget)}
    assert {MetricName.RESENT, MetricName.THROTTLED, MetricName.DEFERRED, MetricName.BREAKER_OPEN} <= names
    assert widget["properties"]["period"] == 60
    variables = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][1]
    annotation = variables["RateAnnotations"]["Fn::If"]
    assert annotation[0] == "HasResendRate"
    assert json.loads(annotation[1]["Fn::Sub"].replace("${ResendRatePerMinute}", "100")) == {
        "horizontal": [{"label": "ResendRatePerMinute", "value": 100}]
    }


def test_placeholder_secret_holds_no_credential(resources: dict[str, Any]) -> None:
    secret = resources["CapillaryPlaceholderSecret"]
    assert secret["Condition"] == "CreateSecret"
    props = secret["Properties"]
    assert "SecretString" not in props
    shape = json.loads(props["GenerateSecretString"]["SecretStringTemplate"])
    assert shape == {"authType": "basic", "username": "CHANGE_ME"}
    assert props["GenerateSecretString"]["GenerateStringKey"] == "password"


# ------------------------------------------------------------------------------------------------ permissions
def test_no_wildcard_action_and_no_star_resource_outside_xray(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    statements = _statements(template["Resources"])
    assert len(statements) >= 10
    for statement in statements:
        assert "NotAction" not in statement
        assert "NotResource" not in statement
        actions = [str(a) for a in _as_list(statement["Action"])]
        assert all("*" not in action for action in actions), statement
        resources_ = _as_list(statement.get("Resource", []))
        if "*" in resources_:
            assert all(a.startswith("xray:") for a in actions), statement
        if statement["Effect"] == "Allow" and "Principal" in statement:
            assert statement["Principal"] != "*" and statement["Principal"] != {"AWS": "*"}
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role":
            for arn in resource["Properties"].get("ManagedPolicyArns", []):
                assert re.search(rf":iam::aws:policy/{XRAY_MANAGED_POLICY}\W*$", json.dumps(arn)), name
        if resource["Type"] == "AWS::Serverless::Function":
            assert "Policies" not in resource["Properties"], "permissions belong to ResenderRole"


def test_function_role_grants_exactly_what_the_code_needs(role_statements: list[dict[str, Any]]) -> None:
    granted: dict[str, list[Any]] = {}
    for statement in role_statements:
        assert statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"]):
            granted.setdefault(action, []).append(statement["Resource"])
    table = {"Fn::GetAtt": ["OutcomesTable", "Arn"]}
    source = {"Fn::GetAtt": ["SourceQueue", "Arn"]}
    dlq = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    secret = {
        "Fn::If": ["CreateSecret", {"Ref": "CapillaryPlaceholderSecret"}, {"Ref": "CapillarySecretArn"}]
    }
    expected = {
        "dynamodb:GetItem": [{"Fn::GetAtt": ["PacingTable", "Arn"]}, table],
        "dynamodb:PutItem": [table],
        "dynamodb:UpdateItem": [{"Fn::GetAtt": ["PacingTable", "Arn"]}, table],
        "dynamodb:ConditionCheckItem": [table],
        "secretsmanager:GetSecretValue": [secret],
        "sqs:ReceiveMessage": [source],
        "sqs:DeleteMessage": [source],
        "sqs:GetQueueAttributes": [source],
        "sqs:ChangeMessageVisibility": [source],
        "sqs:GetQueueUrl": [source],
        "sqs:SendMessage": [source, dlq],  # held-back copies, poison records
        "logs:CreateLogStream": [{"Fn::GetAtt": ["FunctionLogGroup", "Arn"]}],
        "logs:PutLogEvents": [{"Fn::GetAtt": ["FunctionLogGroup", "Arn"]}],
        "kms:Decrypt": [{"Ref": "CapillarySecretKmsKeyArn"}],
    }
    assert granted == expected


# ------------------------------------------------------------------------------------------------ metrics
def test_dashboard_metrics_are_the_ones_the_code_emits(dashboard: dict[str, Any]) -> None:
    seen: set[str] = set()
    for widget in dashboard["widgets"]:
        for strings, _ in _metric_rows(widget):
            own = _own_metric(strings)
            if own is None:
                assert not strings[0].lower().startswith("communication"), strings
                continue
            name, dims = own
            assert name in set(MetricName), f"{name} is not a MetricName"
            assert dims == {"service": "stand-in-AWS::StackName"}
            seen.add(name)
    assert seen == {m.value for m in MetricName}, "every emitted metric belongs on the dashboard"


def test_dashboard_shows_latency_percentiles_queues_and_lambda(dashboard: dict[str, Any]) -> None:
    rows = [
        (strings, options, widget)
        for widget in dashboard["widgets"]
        for strings, options in _metric_rows(widget)
    ]
    latency_stats = {
        o.get("stat") for s, o, _ in rows if s[:2] == [METRICS_NAMESPACE, MetricName.RESEND_LATENCY]
    }
    assert {"p50", "p90", "p99"} <= latency_stats
    sqs = {(s[1], s[3]) for s, _, _ in rows if s[0] == "AWS/SQS"}
    assert ("ApproximateNumberOfMessagesVisible", "stand-in-SourceQueue.QueueName") in sqs
    assert ("ApproximateAgeOfOldestMessage", "stand-in-SourceQueue.QueueName") in sqs
    assert ("ApproximateNumberOfMessagesVisible", "stand-in-DeadLetterQueue.QueueName") in sqs
    lambda_metrics = {
        s[1] for s, _, _ in rows if s[0] == "AWS/Lambda" and s[3] == "stand-in-ResenderFunction"
    }
    assert {"Errors", "Throttles", "Duration", "ConcurrentExecutions"} <= lambda_metrics


def test_alarms_watch_emitted_metrics_and_notify_the_optional_topic(resources: dict[str, Any]) -> None:
    alarms = {name: r for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = set()
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        if props["Namespace"] == METRICS_NAMESPACE:
            assert props["MetricName"] in set(MetricName), name
            assert props["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}], name
        watched.add((props["Namespace"], props["MetricName"]))
        notify = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
        assert props["AlarmActions"] == notify, name
        assert props["TreatMissingData"] == "notBreaching", name
        assert props.get("AlarmDescription"), name
    assert watched == {
        (METRICS_NAMESPACE, MetricName.UNCERTAIN.value),
        (METRICS_NAMESPACE, MetricName.OUTCOME_WRITE_FAILED.value),
        (METRICS_NAMESPACE, MetricName.DEFERRAL_AGE.value),
        (METRICS_NAMESPACE, MetricName.CONFIGURATION_REFUSED.value),
        (METRICS_NAMESPACE, MetricName.UNEXPECTED_ERROR.value),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/Lambda", "Errors"),
    }
    uncertain = alarms["UncertainOutcomeAlarm"]["Properties"]
    assert (uncertain["Statistic"], int(uncertain["Threshold"])) == ("Sum", 1)
    assert uncertain["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    age = alarms["OldestMessageAgeAlarm"]["Properties"]
    assert age["Threshold"] == {"Ref": "OldestMessageAgeThresholdSeconds"}
    deferred = alarms["DeferredTooLongAlarm"]["Properties"]
    # The age of the oldest held-back record, not a count: one record parked too long is enough.
    assert (deferred["MetricName"], deferred["Statistic"]) == (MetricName.DEFERRAL_AGE, "Maximum")
    assert deferred["Threshold"] == {"Ref": "DeferredAgeThresholdSeconds"}
    assert deferred["ComparisonOperator"] == "GreaterThanThreshold"


def test_outputs(template: dict[str, Any]) -> None:
    assert {
        "TopicArn",
        "QueueUrl",
        "DeadLetterQueueUrl",
        "OutcomesTableName",
        "PacingTableName",
        "DashboardUrl",
        "FunctionName",
    } <= set(template["Outputs"])


# ------------------------------------------------------------------------------------------------ samconfig
def test_samconfig_environments(samconfig: dict[str, Any], parameters: dict[str, Any]) -> None:
    assert samconfig["version"] == 0.1
    for environment in ("default", "prod"):
        config = samconfig[environment]
        assert config["global"]["parameters"]["stack_name"]
        assert config["build"]["parameters"] == {"cached": True, "parallel": True}
        deploy = config["deploy"]["parameters"]
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        assert deploy["confirm_changeset"] is True
        assert deploy["resolve_s3"] is True
        overrides = _overrides(samconfig, environment)
        assert set(overrides) <= set(parameters), "unknown parameter in parameter_overrides"
        problems = [p for key, value in overrides.items() for p in _violations(key, value, parameters[key])]
        assert problems == []
    default, prod = _overrides(samconfig, "default"), _overrides(samconfig, "prod")
    assert int(prod["MaximumConcurrency"]) > int(default["MaximumConcurrency"])
    assert prod["CapillaryBaseUrl"] == "https://eu.api.capillarytech.com"
    assert prod["CapillarySecretArn"] and prod["AlarmTopicArn"]


# ------------------------------------------------------------------------------------------------ events
def test_every_event_file_is_json_and_ids_are_unique() -> None:
    names = sorted(path.name for path in EVENTS_DIR.glob("*.json"))
    assert names == sorted([*EVENT_FILES, "env.json"])
    sqs_ids = [
        record["messageId"]
        for name in EVENT_FILES
        for record in _load_event(name)["Records"]
        if record.get("eventSource") == "aws:sqs"
    ]
    assert len(sqs_ids) == len(set(sqs_ids))


def test_event_sqs_plain() -> None:
    (record,) = _assert_sqs_records(_load_event("sqs-plain.json"), 1)
    assert json.loads(record["body"]) == {"messageId": 1746061653596, "channel": "SMS", "reason": "DND"}


def test_event_sqs_sns_envelope() -> None:
    (record,) = _assert_sqs_records(_load_event("sqs-sns-envelope.json"), 1)
    envelope = json.loads(record["body"])
    assert {
        "Type",
        "MessageId",
        "TopicArn",
        "Message",
        "Timestamp",
        "SignatureVersion",
        "Signature",
        "SigningCertURL",
        "UnsubscribeURL",
    } <= set(envelope)
    assert envelope["Type"] == "Notification"
    uuid.UUID(envelope["MessageId"])
    assert envelope["MessageId"] != record["messageId"]
    assert envelope["TopicArn"].startswith("arn:aws:sns:us-east-1:123456789012:")
    assert isinstance(envelope["Message"], str)
    assert json.loads(envelope["Message"]) == {
        "messageId": 1746061653597,
        "channel": "EMAIL",
        "reason": "bounce",
    }


def test_event_sqs_raw_sns_has_a_string_id() -> None:
    (record,) = _assert_sqs_records(_load_event("sqs-raw-sns.json"), 1)
    body = json.loads(record["body"])
    assert body["messageId"] == "1746061653598"
    assert "Type" not in body


def test_event_sns_direct() -> None:
    event = _load_event("sns-direct.json")
    (record,) = event["Records"]
    assert record["EventSource"] == "aws:sns"
    assert record["EventSubscriptionArn"].startswith("arn:aws:sns:")
    sns = record["Sns"]
    assert sns["Type"] == "Notification"
    uuid.UUID(sns["MessageId"])
    assert sns["TopicArn"].startswith("arn:aws:sns:")
    assert isinstance(sns["Message"], str)
    assert json.loads(sns["Message"])["messageId"] == 1746061653599


def test_event_sqs_eventbridge() -> None:
    (record,) = _assert_sqs_records(_load_event("sqs-eventbridge.json"), 1)
    body = json.loads(record["body"])
    assert set(body) == {
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    }
    assert body["detail-type"] == "Communication Delivery Failed"
    uuid.UUID(body["id"])
    assert body["detail"] == {"messageId": 1746061653600, "channel": "WHATSAPP"}


def test_event_sqs_batch_duplicates() -> None:
    records = _assert_sqs_records(_load_event("sqs-batch-duplicates.json"), 4)
    ids = [json.loads(record["body"])["messageId"] for record in records]
    assert ids == [1746061653601, 1746061653601, 1746061653602, 174606165]


def test_event_sqs_poison() -> None:
    records = _assert_sqs_records(_load_event("sqs-poison.json"), 9)
    bodies = [record["body"] for record in records]
    assert bodies == [
        "not json",
        '{"channel":"SMS"}',
        '{"messageId": true}',
        '{"messageId": -5}',
        '{"messageId": 0}',
        '{"messageId": 1.5}',
        '{"messageId": 9223372036854775808}',
        '{"messageId": "12ab"}',
        "",
    ]
    assert json.loads(bodies[6])["messageId"] == 2**63


def test_env_json_sets_only_declared_variables_and_is_valid(env_vars: dict[str, Any]) -> None:
    env = _load_event("env.json")
    assert set(env) == {"ResenderFunction"}
    local = env["ResenderFunction"]
    # sam local invoke passes only variables that the template declares.
    assert set(local) <= set(env_vars)
    assert all(isinstance(value, str) for value in local.values())
    assert local["OUTCOMES_TABLE"] == "communication-outcomes"
    assert local["CAPILLARY_SECRET_ID"] == "capillary/resender"
    assert local["CAPILLARY_BASE_URL"] == "http://127.0.0.1:8080"
    assert local["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert local["DEAD_LETTER_QUEUE_URL"] == "http://127.0.0.1:5000/123456789012/communication-failures-dlq"
    assert local["POWERTOOLS_SERVICE_NAME"] == SERVICE_NAME
    assert local["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    settings = Settings.from_env(local)
    assert settings.capillary_base_url == "http://127.0.0.1:8080"


# ------------------------------------------------------------------------------------------------ resend policy
POLICY_PARAMETERS = {
    "REASON_PATH": "ReasonPath",
    "SKIP_REASONS": "SkipReasons",
    "CHANNEL_PATH": "ChannelPath",
    "RESEND_CHANNELS": "ResendChannels",
    "FAILED_AT_PATH": "FailedAtPath",
    "RESEND_MAX_AGE_SECONDS": "ResendMaxAgeSeconds",
    "SKIP_WHEN": "SkipWhen",
    "ORG_ID_PATH": "OrgIdPath",
}


def test_each_policy_setting_is_a_parameter_whose_default_is_the_codes(
    env_vars: dict[str, Any], parameters: dict[str, Any]
) -> None:
    required = {"OUTCOMES_TABLE": "t", "CAPILLARY_SECRET_ID": "s", "CAPILLARY_BASE_URL": "https://x.example"}
    for env_name, parameter in POLICY_PARAMETERS.items():
        assert env_vars[env_name] == {"Ref": parameter}
    deployed = Settings.from_env(
        {**required, **{env: str(parameters[p]["Default"]) for env, p in POLICY_PARAMETERS.items()}}
    )
    assert deployed == Settings.from_env(required)
