"""The platform on one machine: moto as AWS, each ``Platform-<env>`` template deployed into it,
the control plane's handlers run in-process behind a local front that plays API Gateway, and
each fleet real: its instances systemd-nspawn containers on the platform's own bridge, running
their user data and the SSM deploy document, behind an HAProxy that plays the fleet's load
balancer and target group.

Run ``python -m local --env staging`` (``make local``, as root; ``--simulated`` keeps moto's
instances) or ``make demo``. Every change to moto is in :mod:`local.hooks`. Nothing here runs
in Lambda. See docs/architecture.md, "The local platform".
"""
