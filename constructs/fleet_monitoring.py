"""Alarms that rollouts watch, and a dashboard, for one app's fleet in one environment."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Aws, CfnOutput, Duration
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_elasticloadbalancingv2 as elbv2

from constructs import Construct

# One-minute periods: the finest ALB metrics have, so a bad batch is seen within minutes.
PERIOD = Duration.minutes(1)
# 5xx rate and response time: 2 bad minutes out of the last 3 (one slow minute is noise).
EVALUATION_PERIODS = 3
DATAPOINTS_TO_ALARM = 2
# Unhealthy hosts: 2 minutes in a row (new targets are "initial", not unhealthy, while
# their first checks run; an instance that stays unhealthy is a real problem).
UNHEALTHY_MINUTES = 2


@dataclass(frozen=True)
class FleetAlarmThresholds:
    """When a fleet's alarms fire.

    ``FleetAlarmThresholds(error_rate_percent=5, response_time_p95_seconds=2, unhealthy_hosts=1)``:
    more than 5% of requests answered 5xx by the app, a 95th percentile response time
    above 2 s, at least one unhealthy target.
    """

    error_rate_percent: float = 5
    response_time_p95_seconds: float = 2
    unhealthy_hosts: int = 1

    def check(self) -> None:
        """Raise ``ValueError`` naming the threshold that cannot work, and the fix."""
        if not 0 < self.error_rate_percent < 100:
            raise ValueError(
                f"FleetAlarmThresholds: error_rate_percent {self.error_rate_percent} is not a percentage of "
                "requests; use more than 0 and less than 100, e.g. 5"
            )
        if self.response_time_p95_seconds <= 0:
            raise ValueError(
                f"FleetAlarmThresholds: response_time_p95_seconds {self.response_time_p95_seconds} never "
                "alarms usefully; use a positive number of seconds, e.g. 2"
            )
        if self.unhealthy_hosts < 1:
            raise ValueError(
                f"FleetAlarmThresholds: unhealthy_hosts {self.unhealthy_hosts} would always alarm; use 1 or more"
            )


class FleetMonitoring(Construct):
    """CloudWatch alarms on a fleet's health, and a dashboard of it.

    Three alarms, each over one-minute periods and quiet when there is no data (no
    traffic is not an error): the share of requests the app answers with 5xx, the
    95th percentile target response time, and unhealthy targets. Rollouts and instance
    refreshes watch :attr:`alarm_names`. The dashboard shows requests, 5xx, latency
    percentiles, target health, the Auto Scaling group's instances and their CPU.
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        app_name: str,
        env_name: str,
        load_balancer: elbv2.IApplicationLoadBalancer,
        target_group: elbv2.IApplicationTargetGroup,
        auto_scaling_group: autoscaling.IAutoScalingGroup,
        thresholds: FleetAlarmThresholds | None = None,
    ) -> None:
        super().__init__(scope, id_)
        thresholds = thresholds or FleetAlarmThresholds()
        thresholds.check()
        self._where = f"{app_name} in {env_name}"
        self._thresholds = thresholds
        self._load_balancer = load_balancer
        self._target_group = target_group
        self._group_name = auto_scaling_group.auto_scaling_group_name
        self._error_rate_alarm = self._build_error_rate_alarm()
        self._response_time_alarm = self._build_response_time_alarm()
        self._unhealthy_hosts_alarm = self._build_unhealthy_hosts_alarm()
        self._dashboard = self._build_dashboard()
        CfnOutput(
            self,
            "DashboardUrl",
            value=f"https://console.aws.amazon.com/cloudwatch/home?region={Aws.REGION}"
            f"#dashboards:name={self._dashboard.dashboard_name}",
            description=f"CloudWatch dashboard of {self._where}",
        )

    # Metrics

    def _requests(self) -> cloudwatch.Metric:
        return self._target_group.metrics.request_count(period=PERIOD, label="Requests")

    def _target_5xx(self) -> cloudwatch.Metric:
        return self._target_group.metrics.http_code_target(
            elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=PERIOD, label="5xx from the app"
        )

    def _error_rate_percent(self) -> cloudwatch.MathExpression:
        # ALB publishes no 5xx count for a minute without 5xx: that minute's rate is 0.
        # A minute without requests has no rate at all (missing, so not breaching).
        return cloudwatch.MathExpression(
            expression="100 * FILL(errors, 0) / requests",
            using_metrics={"errors": self._target_5xx(), "requests": self._requests()},
            period=PERIOD,
            label="5xx rate (%)",
        )

    def _response_time(self, statistic: str) -> cloudwatch.Metric:
        return self._target_group.metrics.target_response_time(period=PERIOD, statistic=statistic)

    def _group_metric(self, namespace: str, name: str, statistic: str, label: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=namespace,
            metric_name=name,
            dimensions_map={"AutoScalingGroupName": self._group_name},
            statistic=statistic,
            period=PERIOD,
            label=label,
        )

    # Alarms

    def _build_error_rate_alarm(self) -> cloudwatch.Alarm:
        limit = self._thresholds.error_rate_percent
        return self._error_rate_percent().create_alarm(
            self,
            "ErrorRate",
            alarm_description=f"{self._where}: more than {limit:g}% of requests answered 5xx by the app "
            f"in {DATAPOINTS_TO_ALARM} of {EVALUATION_PERIODS} minutes",
            threshold=limit,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=EVALUATION_PERIODS,
            datapoints_to_alarm=DATAPOINTS_TO_ALARM,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    def _build_response_time_alarm(self) -> cloudwatch.Alarm:
        limit = self._thresholds.response_time_p95_seconds
        return self._response_time("p95").create_alarm(
            self,
            "ResponseTime",
            alarm_description=f"{self._where}: 95th percentile response time above {limit:g} s "
            f"in {DATAPOINTS_TO_ALARM} of {EVALUATION_PERIODS} minutes",
            threshold=limit,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=EVALUATION_PERIODS,
            datapoints_to_alarm=DATAPOINTS_TO_ALARM,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    def _build_unhealthy_hosts_alarm(self) -> cloudwatch.Alarm:
        limit = self._thresholds.unhealthy_hosts
        return self._target_group.metrics.unhealthy_host_count(
            period=PERIOD, statistic=cloudwatch.Stats.MAXIMUM
        ).create_alarm(
            self,
            "UnhealthyHosts",
            alarm_description=f"{self._where}: at least {limit} unhealthy target(s) for {UNHEALTHY_MINUTES} minutes",
            threshold=limit,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=UNHEALTHY_MINUTES,
            datapoints_to_alarm=UNHEALTHY_MINUTES,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

    # Dashboard

    def _build_dashboard(self) -> cloudwatch.Dashboard:
        thresholds = self._thresholds
        graph_height = 6
        return cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=Duration.hours(3),
            widgets=[
                [cloudwatch.AlarmStatusWidget(title=f"Alarms of {self._where}", alarms=list(self.alarms), width=24)],
                [
                    cloudwatch.GraphWidget(
                        title="Requests per minute",
                        left=[self._requests()],
                        width=8,
                        height=graph_height,
                    ),
                    cloudwatch.GraphWidget(
                        title="5xx",
                        left=[
                            self._target_5xx(),
                            self._load_balancer.metrics.http_code_elb(
                                elbv2.HttpCodeElb.ELB_5XX_COUNT, period=PERIOD, label="5xx from the load balancer"
                            ),
                        ],
                        right=[self._error_rate_percent()],
                        right_annotations=[
                            cloudwatch.HorizontalAnnotation(value=thresholds.error_rate_percent, label="alarm")
                        ],
                        width=8,
                        height=graph_height,
                    ),
                    cloudwatch.GraphWidget(
                        title="Response time",
                        left=[self._response_time(p).with_(label=f"{p} (s)") for p in ("p50", "p95", "p99")],
                        left_annotations=[
                            cloudwatch.HorizontalAnnotation(
                                value=thresholds.response_time_p95_seconds, label="p95 alarm"
                            )
                        ],
                        width=8,
                        height=graph_height,
                    ),
                ],
                [
                    cloudwatch.GraphWidget(
                        title="Targets",
                        left=[
                            self._target_group.metrics.healthy_host_count(
                                period=PERIOD, statistic=cloudwatch.Stats.MINIMUM, label="Healthy"
                            ),
                            self._target_group.metrics.unhealthy_host_count(
                                period=PERIOD, statistic=cloudwatch.Stats.MAXIMUM, label="Unhealthy"
                            ),
                        ],
                        width=8,
                        height=graph_height,
                    ),
                    cloudwatch.GraphWidget(
                        title="Instances",
                        left=[
                            self._group_metric("AWS/AutoScaling", name, cloudwatch.Stats.AVERAGE, label)
                            for name, label in (
                                ("GroupInServiceInstances", "In service"),
                                ("GroupDesiredCapacity", "Desired"),
                                ("GroupPendingInstances", "Launching"),
                            )
                        ],
                        width=8,
                        height=graph_height,
                    ),
                    cloudwatch.GraphWidget(
                        title="CPU (%)",
                        left=[
                            self._group_metric("AWS/EC2", "CPUUtilization", statistic, label)
                            for statistic, label in (
                                (cloudwatch.Stats.AVERAGE, "Average"),
                                (cloudwatch.Stats.MAXIMUM, "Busiest"),
                            )
                        ],
                        width=8,
                        height=graph_height,
                    ),
                ],
            ],
        )

    @property
    def alarms(self) -> tuple[cloudwatch.IAlarm, ...]:
        """The fleet's alarms: 5xx rate, p95 response time, unhealthy targets."""
        return (self._error_rate_alarm, self._response_time_alarm, self._unhealthy_hosts_alarm)

    @property
    def alarm_names(self) -> tuple[str, ...]:
        """The names of :attr:`alarms`, for rollouts and instance refreshes to watch."""
        return tuple(alarm.alarm_name for alarm in self.alarms)

    @property
    def dashboard(self) -> cloudwatch.Dashboard:
        """The fleet's CloudWatch dashboard."""
        return self._dashboard
