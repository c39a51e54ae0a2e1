"""Acknowledging cdk-nag findings, each with the reason it does not apply."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations

from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge the AwsSolutions ``rule`` (``"AwsSolutions-S1"`` or a granular
    ``"AwsSolutions-IAM5[Resource::...]"``) on ``scope`` and its children, with ``reason``."""
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))
