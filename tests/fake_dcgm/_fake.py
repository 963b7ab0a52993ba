"""Shared by the fake modules: the scenario and the call log."""

import json
import os


def config():
    with open(os.environ["FAKE_DCGM_CONFIG"]) as f:
        return json.load(f)


def log(**call):
    path = config().get("log")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(call) + "\n")
