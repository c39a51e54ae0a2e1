"""The CloudWatch agent's log shipping, for local instances: what the agent on an EC2 instance
does with the ``logs`` section that ``image/provision.sh`` writes into its configuration.

The Debian image has no CloudWatch agent, so the local platform reads the same configuration
file inside each container and ships each listed file's new lines to moto's CloudWatch Logs,
into ``log_stream_name`` with ``{instance_id}`` filled in — as the agent would. The files are
read from the host through the container's root (no process runs in the container for it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local.aws import LogStream

# Where provisioning writes the agent's configuration (image/provision.sh, CWAGENT_CONFIG).
CONFIG = "/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json"
POLL_SECONDS = 0.5
log = logging.getLogger("local")


def collected_files(config: dict[str, Any], instance_id: str) -> list[tuple[str, str, str]]:
    """(file path, log group, log stream) for each file the configuration ships."""
    listed = ((config.get("logs") or {}).get("logs_collected") or {}).get("files", {}).get("collect_list") or []
    return [
        (
            str(item["file_path"]),
            str(item["log_group_name"]),
            str(item["log_stream_name"]).replace("{instance_id}", instance_id),
        )
        for item in listed
    ]


def ship(root: Path, instance_id: str, logs: Any, stopped: Callable[[], bool]) -> None:
    """Ship the files the instance's agent configuration lists until ``stopped()``."""
    try:
        config = json.loads((root / CONFIG.lstrip("/")).read_text())
    except (OSError, ValueError):
        return  # provisioning wrote no agent configuration: nothing to ship
    for path, group, stream in collected_files(config, instance_id):
        arguments = (root / path.lstrip("/"), group, stream, logs, stopped)
        threading.Thread(target=_tail, args=arguments, name=f"cwagent-{instance_id}", daemon=True).start()


def _tail(path: Path, group: str, stream_name: str, logs: Any, stopped: Callable[[], bool]) -> None:
    stream: LogStream | None = None
    offset, inode, partial = 0, None, ""
    while not stopped():
        try:
            stat = path.stat()
            if inode != stat.st_ino or stat.st_size < offset:  # created, rotated or truncated
                inode, offset, partial = stat.st_ino, 0, ""
            if stat.st_size > offset:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                offset += len(chunk)
                lines = (partial + chunk.decode("utf-8", errors="replace")).split("\n")
                partial = lines.pop()
                if lines and stream is None:
                    stream = LogStream(logs, group, stream_name)
                for line in lines:
                    if line and stream is not None:
                        stream.line(line)
            if stream is not None:
                stream.flush()
        except OSError:
            pass  # not written yet, or the container is going away
        except Exception as error:  # moto refused: say so once and stop shipping this file
            log.warning("local CloudWatch agent: shipping %s to %s stopped: %s", path, group, error)
            return
        time.sleep(POLL_SECONDS)
