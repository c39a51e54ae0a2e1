"""FleetMonitoring: the alarms rollouts watch, and the dashboard, of each fleet."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk.assertions import Match, Template

from constructs.fleet_monitoring import FleetAlarmThresholds, FleetMonitoring

APPS = ["web", "billing"]


def _one(template: Template, resource_type: str, prefix: str) -> tuple[str, dict[str, Any]]:
    found = {k: v for k, v in template.find_resources(resource_type).items() if k.startswith(prefix)}
    assert len(found) == 1, f"expected one {resource_type} named {prefix}*, found {list(found)}"
    return next(iter(found.items()))


def _target_group(template: Template, app: str) -> str:
    return _one(template, "AWS::ElasticLoadBalancingV2::TargetGroup", f"App{app}FleetWeb")[0]


def _dimension(name: str, value: Any) -> dict[str, Any]:
    return {"Name": name, "Value": value}


def _metric(name: str, target_group: str, statistic: str) -> dict[str, Any]:
    return {
        "Metric": {
            "Dimensions": Match.array_with(
                [_dimension("TargetGroup", {"Fn::GetAtt": [target_group, "TargetGroupFullName"]})]
            ),
            "MetricName": name,
            "Namespace": "AWS/ApplicationELB",
        },
        "Period": 60,
        "Stat": statistic,
    }


@pytest.mark.parametrize("env", ["staging", "production"])
def test_three_alarms_and_a_dashboard_per_fleet(templates: dict[str, dict[str, Any]], env: str) -> None:
    template = Template.from_json(templates[f"Platform-{env}"])
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    dashboards = template.find_resources("AWS::CloudWatch::Dashboard")
    for app in APPS:
        assert sorted(
            k.removeprefix(f"App{app}Monitoring")[:-8] for k in alarms if k.startswith(f"App{app}Monitoring")
        ) == [
            "ErrorRate",
            "ResponseTime",
            "UnhealthyHosts",
        ]
        assert [k for k in dashboards if k.startswith(f"App{app}MonitoringDashboard")]
    assert (len(alarms), len(dashboards)) == (3 * len(APPS), len(APPS))


@pytest.mark.parametrize("app", APPS)
def test_error_rate_alarm_is_the_share_of_requests_answered_5xx(staging: Template, app: str) -> None:
    target_group = _target_group(staging, app)
    _, alarm = _one(staging, "AWS::CloudWatch::Alarm", f"App{app}MonitoringErrorRate")
    props = alarm["Properties"]
    assert (props["Threshold"], props["ComparisonOperator"]) == (5, "GreaterThanThreshold")
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"]) == (3, 2)
    assert props["TreatMissingData"] == "notBreaching"
    Template.from_json({"Resources": {"A": alarm}}).has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Metrics": [
                {
                    "Expression": "100 * FILL(errors, 0) / requests",
                    "Id": "expr_1",
                    "Label": "5xx rate (%)",
                    "ReturnData": True,
                },
                {
                    "Id": "errors",
                    "Label": Match.any_value(),
                    "MetricStat": _metric("HTTPCode_Target_5XX_Count", target_group, "Sum"),
                    "ReturnData": False,
                },
                {
                    "Id": "requests",
                    "Label": Match.any_value(),
                    "MetricStat": _metric("RequestCount", target_group, "Sum"),
                    "ReturnData": False,
                },
            ]
        },
    )


@pytest.mark.parametrize("app", APPS)
def test_response_time_alarm_is_on_the_95th_percentile(staging: Template, app: str) -> None:
    props = _one(staging, "AWS::CloudWatch::Alarm", f"App{app}MonitoringResponseTime")[1]["Properties"]
    assert props["MetricName"] == "TargetResponseTime"
    assert props["ExtendedStatistic"] == "p95"
    assert "Statistic" not in props
    assert (props["Period"], props["Threshold"], props["ComparisonOperator"]) == (60, 2, "GreaterThanThreshold")
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"], props["TreatMissingData"]) == (3, 2, "notBreaching")
    assert (
        _dimension("TargetGroup", {"Fn::GetAtt": [_target_group(staging, app), "TargetGroupFullName"]})
        in props["Dimensions"]
    )


@pytest.mark.parametrize("app", APPS)
def test_unhealthy_hosts_alarm_fires_after_two_minutes(staging: Template, app: str) -> None:
    props = _one(staging, "AWS::CloudWatch::Alarm", f"App{app}MonitoringUnhealthyHosts")[1]["Properties"]
    assert (props["MetricName"], props["Statistic"], props["Period"]) == ("UnHealthyHostCount", "Maximum", 60)
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"], props["TreatMissingData"]) == (2, 2, "notBreaching")
    assert (
        _dimension("TargetGroup", {"Fn::GetAtt": [_target_group(staging, app), "TargetGroupFullName"]})
        in props["Dimensions"]
    )


def _dashboard(template: Template, app: str) -> dict[str, Any]:
    """The dashboard's body, each deploy-time value shown as ``<token>``."""
    body = _one(template, "AWS::CloudWatch::Dashboard", f"App{app}MonitoringDashboard")[1]["Properties"][
        "DashboardBody"
    ]
    text = "".join(part if isinstance(part, str) else "<token>" for part in body["Fn::Join"][1])
    parsed: dict[str, Any] = json.loads(text)
    return parsed


@pytest.mark.parametrize("app", APPS)
def test_dashboard_shows_traffic_errors_latency_hosts_instances_and_cpu(staging: Template, app: str) -> None:
    widgets = _dashboard(staging, app)["widgets"]
    [alarm_widget] = [w for w in widgets if w["type"] == "alarm"]
    assert len(alarm_widget["properties"]["alarms"]) == 3
    graphs = {w["properties"]["title"]: w["properties"]["metrics"] for w in widgets if w["type"] == "metric"}
    assert sorted(graphs) == sorted(["Requests per minute", "5xx", "Response time", "Targets", "Instances", "CPU (%)"])

    def shown(title: str) -> set[tuple[str, str]]:
        # (metric name, statistic) of each plotted metric; expressions by their text.
        return {
            (line[-1]["expression"], "") if "expression" in line[-1] else (line[1], line[-1].get("stat", "Average"))
            for line in graphs[title]
            if line[-1].get("visible", True)
        }

    assert shown("Requests per minute") == {("RequestCount", "Sum")}
    assert shown("5xx") == {
        ("HTTPCode_Target_5XX_Count", "Sum"),
        ("HTTPCode_ELB_5XX_Count", "Sum"),
        ("100 * FILL(errors, 0) / requests", ""),
    }
    assert shown("Response time") == {("TargetResponseTime", p) for p in ("p50", "p95", "p99")}
    assert shown("Targets") == {("HealthyHostCount", "Minimum"), ("UnHealthyHostCount", "Maximum")}
    assert shown("Instances") == {
        ("GroupInServiceInstances", "Average"),
        ("GroupDesiredCapacity", "Average"),
        ("GroupPendingInstances", "Average"),
    }
    assert shown("CPU (%)") == {("CPUUtilization", "Average"), ("CPUUtilization", "Maximum")}
    # Instances and CPU are the fleet's own Auto Scaling group's.
    for title in ("Instances", "CPU (%)"):
        assert all(line[2:4] == ["AutoScalingGroupName", "<token>"] for line in graphs[title])


def test_each_fleet_outputs_its_dashboard_url(staging: Template) -> None:
    outputs = staging.find_outputs("*")
    for app in APPS:
        [output] = [v for k, v in outputs.items() if k.startswith(f"App{app}MonitoringDashboardUrl")]
        dashboard = _one(staging, "AWS::CloudWatch::Dashboard", f"App{app}MonitoringDashboard")[0]
        assert {"Ref": dashboard} in output["Value"]["Fn::Join"][1]


def _standalone(thresholds: FleetAlarmThresholds | None) -> tuple[cdk.Stack, FleetMonitoring]:
    stack = cdk.Stack(cdk.App(), "Fleet")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    load_balancer = elbv2.ApplicationLoadBalancer(stack, "LoadBalancer", vpc=vpc)
    target_group = elbv2.ApplicationTargetGroup(
        stack, "Targets", vpc=vpc, port=5000, protocol=elbv2.ApplicationProtocol.HTTP
    )
    load_balancer.add_listener("Http", port=80, default_target_groups=[target_group])
    group = autoscaling.AutoScalingGroup(
        stack,
        "Instances",
        vpc=vpc,
        instance_type=ec2.InstanceType("t3.micro"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(),
    )
    monitoring = FleetMonitoring(
        stack,
        "Monitoring",
        app_name="shop",
        env_name="qa",
        load_balancer=load_balancer,
        target_group=target_group,
        auto_scaling_group=group,
        thresholds=thresholds,
    )
    return stack, monitoring


def test_thresholds_are_configurable_and_alarm_names_name_the_alarms() -> None:
    stack, monitoring = _standalone(
        FleetAlarmThresholds(error_rate_percent=1.5, response_time_p95_seconds=0.5, unhealthy_hosts=2)
    )
    template = Template.from_stack(stack)
    ids = {
        name: _one(template, "AWS::CloudWatch::Alarm", f"Monitoring{name}")[0]
        for name in ("ErrorRate", "ResponseTime", "UnhealthyHosts")
    }
    thresholds = {name: template.to_json()["Resources"][i]["Properties"]["Threshold"] for name, i in ids.items()}
    assert thresholds == {"ErrorRate": 1.5, "ResponseTime": 0.5, "UnhealthyHosts": 2}
    assert stack.resolve(list(monitoring.alarm_names)) == [
        {"Ref": ids[n]} for n in ("ErrorRate", "ResponseTime", "UnhealthyHosts")
    ]
    assert [stack.resolve(a.alarm_arn) for a in monitoring.alarms] == [
        {"Fn::GetAtt": [ids[n], "Arn"]} for n in ("ErrorRate", "ResponseTime", "UnhealthyHosts")
    ]
    description = template.to_json()["Resources"][ids["ErrorRate"]]["Properties"]["AlarmDescription"]
    assert description == "shop in qa: more than 1.5% of requests answered 5xx by the app in 2 of 3 minutes"


@pytest.mark.parametrize(
    "thresholds, message",
    [
        (FleetAlarmThresholds(error_rate_percent=0), "error_rate_percent 0 is not a percentage"),
        (FleetAlarmThresholds(error_rate_percent=100), "error_rate_percent 100 is not a percentage"),
        (FleetAlarmThresholds(response_time_p95_seconds=0), "response_time_p95_seconds 0 never alarms"),
        (FleetAlarmThresholds(unhealthy_hosts=0), "unhealthy_hosts 0 would always alarm"),
    ],
)
def test_thresholds_that_cannot_work_are_refused_with_the_fix(thresholds: FleetAlarmThresholds, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _standalone(thresholds)
