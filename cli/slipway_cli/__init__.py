"""``slipway``: the command line of the Slipway platform, a client of its API only.

Modules: :mod:`.client` (the API over HTTP, where to find it, the credentials),
:mod:`.transfer` (git archive, presigned uploads and downloads), :mod:`.output` (progress
and text), :mod:`.commands` (one function per command) and :mod:`.main` (the parser).
"""
