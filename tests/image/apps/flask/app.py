"""A Flask app as developers write one: served by gunicorn, dependencies in requirements.txt."""

import os
import sys

import flask

app = flask.Flask(__name__)


@app.get("/")
def index():
    return f"hello from flask {flask.__version__}\n"


@app.get("/health")
def health():
    return "ok\n"


@app.get("/where")
def where():
    """Where the process runs and what it may write: HOME yes, its own code no."""
    home = os.environ["HOME"]
    with open(os.path.join(home, "visits"), "a") as handle:
        handle.write("x")
    try:
        with open("app.py", "a"):
            code_writable = True
    except OSError:
        code_writable = False
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "executable": sys.executable,
        "flask": flask.__file__,
        "home": home,
        "cwd": os.getcwd(),
        "code_writable": code_writable,
        "path": os.environ["PATH"],
    }
