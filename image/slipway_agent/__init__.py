"""Slipway's instance deploy agent, installed as ``/home/deploy/bin/deploy``.

Runs on the instance's own python3 (3.9 on Amazon Linux 2023) with the
standard library and the distribution's boto3 only.
"""
