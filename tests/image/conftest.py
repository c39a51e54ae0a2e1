"""Make the agent importable as on the instance (``import slipway_agent``), and the harness."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE = HERE.parents[1] / "image"
for path in (str(IMAGE), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)
