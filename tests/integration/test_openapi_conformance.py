"""schemathesis against /openapi.json on a real server: no 500, every answer as described."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from tests.server_helpers import REPO

EXAMPLE = REPO / "examples" / "numpy-linear" / "model"

# Every check but positive_data_acceptance, which expects any body the schema allows to be
# answered 2xx: the description cannot say which inputs a user's model takes (the example
# wants rows of 3 numbers), and the model refuses the rest with 4xx, as it should.
RUN = """
import sys
from schemathesis.cli import schemathesis
sys.argv = ["st", *sys.argv[1:]]
sys.exit(schemathesis())
"""


def test_served_description_is_the_repo_file(serve):
    server = serve(EXAMPLE, "--workers", "1")
    response = requests.get(server.url("/openapi.json"))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with open(REPO / "serving" / "http" / "openapi.json", encoding="utf-8") as f:
        spec = json.load(f)
    # A single-model server leaves out what only multi-model servers do.
    assert spec["paths"]["/models"]["post"]["x-multi-model"] is True
    del spec["paths"]["/models"]["post"], spec["paths"]["/models/{name}"]["delete"]
    assert response.json() == spec


@pytest.mark.parametrize("multi_model", [False, True], ids=["single-model", "multi-model"])
def test_schemathesis_finds_no_500_and_no_answer_off_the_description(serve, tmp_path,
                                                                     multi_model):
    if multi_model:  # the example loaded as "default", so that invocations reach a model
        server = serve(tmp_path / "none", "--multi-model", "--workers", "2",
                       "--models-memory-mb", "64", "--multi-model-root", str(EXAMPLE))
        requests.post(server.url("/models"), json={"model_name": "default",
                                                   "url": str(EXAMPLE)}).raise_for_status()
    else:
        server = serve(EXAMPLE, "--workers", "2")
    result = subprocess.run(
        [sys.executable, "-c", RUN, "run", server.url("/openapi.json"),
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "60" if multi_model else "150", "--seed", "20261121",
         "--generation-database", "none",
         "--request-timeout", "30", "--report", "junit",
         "--report-junit-path", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    # It did exercise the server: hundreds of answers, and none of them a 500.
    answers = server.log.count("serving.access")
    assert answers > 300, answers
    assert '" 500 ' not in server.log
