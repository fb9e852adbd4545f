"""The OpenAPI schema checked against the running API: schemathesis generates requests from
the schema (valid and invalid ones) and every response must match what the schema says."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from benchmarks.livestack import ROOT, live_stack

pytestmark = pytest.mark.slow

REPORT = ROOT / "test-artifacts" / "schemathesis"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def _token(env: dict[str, str]) -> str:
    code = (
        "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
        "u = User.objects.create_user('fuzz', password='fuzz passphrase'); print(Token.objects.create(user=u).key)"
    )
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    return out.stdout.decode().strip().splitlines()[-1]


def test_api_conforms_to_its_schema(tmp_path: Path, butterflies: dict[str, list[Path]]) -> None:
    with live_stack(tmp_path / "var") as stack:
        token = _token(stack.env)
        auth = {"Authorization": f"Token {token}"}
        ids = []
        for path in (butterflies["001"][0], butterflies["001"][1], butterflies["002"][0]):
            response = requests.post(
                stack.url + "/api/v1/images/", headers=auth, files={"file": (path.name, path.read_bytes())}, timeout=60
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 240
        while any(requests.get(f"{stack.url}/api/v1/images/{i}/status/", timeout=10).json()["status"] != "ready" for i in ids):
            assert time.monotonic() < deadline, stack.log_tail()
            time.sleep(0.5)

        REPORT.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{stack.url}/api/v1/schema/",
                "--checks", CHECKS, "--max-examples", "25", "--seed", "7", "--workers", "1",
                "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
                "--header", f"Authorization: Token {token}",
                "--report", "junit", "--report-dir", str(REPORT),
            ],
            cwd=tmp_path, env=stack.env, capture_output=True, text=True, timeout=900,  # its cache stays out of the tree
        )  # fmt: skip
        (REPORT / "output.txt").write_text(run.stdout + run.stderr)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:] + stack.log_tail()
        ran = re.search(r"(\d+) generated, \1 passed", run.stdout)
        assert ran and int(ran.group(1)) >= 100, run.stdout[-3000:]  # the run really exercised the API
