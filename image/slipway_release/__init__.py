"""What a release is and where it lives, defined once for every tier.

The instance agent, the control plane's Lambda code, the CDK constructs and the local
platform all import these modules: names and ids (:mod:`.names`), the release bucket's
layout (:mod:`.layout`), the env file (:mod:`.envfile`), the Procfile (:mod:`.procfile`),
the manifest and its schema (:mod:`.manifest`) and the rules for source archives
(:mod:`.archive`). Python 3.9 and the standard library only: it runs on the instance.
"""
