"""The platform on one machine: moto as AWS, each ``Platform-<env>`` template deployed into it,
the control plane's handlers run in-process behind a local front that plays API Gateway.

Run ``python -m local --env staging`` (``make local``). Nothing here runs in Lambda.
"""
