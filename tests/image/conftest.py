"""Make the agent importable as on the instance (``import slipway_agent``), and the harness;
the session's one booted instance, shared by the agent and build tests."""

import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
IMAGE = HERE.parents[1] / "image"
for path in (str(IMAGE), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def instance_world(tmp_path_factory):
    """A provisioned instance, moto S3 with a bucket, a publisher for demo/test and a syslog sink."""
    from instance_harness import APP, BUCKET, ENV, Publisher, SyslogSink, agent_env, moto_s3, provision_env, s3_client

    from local.instance import booted_instance, free_port, provision, trust_host_certificates

    sink = SyslogSink()
    started = time.monotonic()
    with moto_s3() as endpoint, booted_instance(tmp_path_factory.mktemp("instance")) as instance:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        provisioned = provision(instance, provision_env(sink))
        world = {
            "instance": instance,
            "client": client,
            "publisher": Publisher(client, APP, ENV),
            "port": free_port(),
            "sink": sink,
            "env": agent_env(endpoint),
            "registry_env": trust_host_certificates(instance),
            "provision_output": provisioned.stdout,
        }
        print(f"instance ready in {time.monotonic() - started:.1f}s")
        yield world
    sink.close()
