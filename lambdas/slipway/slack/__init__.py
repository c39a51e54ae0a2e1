"""ChatOps: the ``/slipway`` Slack slash command, verified by Slack's signature, mapped to API actions."""
