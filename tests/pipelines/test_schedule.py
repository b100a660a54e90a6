"""`recpipe schedule` against a fake KFP API server on loopback (no cluster runs here)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from recpipe.cli import main as cli_main
from recpipe.pipelines.schedule import kfp_cron


class FakeKfp(BaseHTTPRequestHandler):
    """Answers the v2beta1 endpoints kfp.Client uses for a recurring run; records every request."""

    requests: list[tuple[str, str, dict]] = []
    experiments: dict[str, dict] = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        FakeKfp.requests.append(("GET", self.path, {}))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._send(200, {"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._send(200, {"experiments": list(FakeKfp.experiments.values()),
                                    "total_size": len(FakeKfp.experiments)})
        return self._send(404, {"error": f"unexpected GET {self.path}"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        FakeKfp.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            exp = {"experiment_id": f"exp-{len(FakeKfp.experiments) + 1}", "display_name": body["display_name"]}
            FakeKfp.experiments[body["display_name"]] = exp
            return self._send(200, exp)
        if self.path == "/apis/v2beta1/recurringruns":
            return self._send(200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"})
        return self._send(404, {"error": f"unexpected POST {self.path}"})


@pytest.fixture()
def fake_kfp():
    FakeKfp.requests, FakeKfp.experiments = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_schedule_creates_recurring_run_with_catchup_off(fake_kfp, capsys):
    rc = cli_main(["schedule", "--host", fake_kfp, "--cron", "0 3 * * *", "--raw-inputs", "gs://logs/{day}.tsv.gz",
                   "--dataset-root", "gs://bucket/dataset"])
    assert rc == 0
    assert "rr-1" in capsys.readouterr().out
    posts = [(p, b) for m, p, b in FakeKfp.requests if m == "POST"]
    assert [p for p, _ in posts] == ["/apis/v2beta1/experiments", "/apis/v2beta1/recurringruns"]
    rr = posts[1][1]
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert rr["no_catchup"] is True
    assert rr["max_concurrency"] == "1" or rr["max_concurrency"] == 1
    assert rr["experiment_id"] == "exp-1"
    params = rr["runtime_config"]["parameters"]
    assert params["raw_inputs"] == "gs://logs/{day}.tsv.gz" and params["dataset_root"] == "gs://bucket/dataset"
    spec = rr["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "recpipe-daily-retrain"
    # the scheduled-time placeholder feeds the day of every scheduled run
    assert "{{$.pipeline_job_schedule_time_utc}}" in yaml.safe_dump(spec)


def test_schedule_reuses_experiment_and_catchup_flag(fake_kfp):
    FakeKfp.experiments["recpipe"] = {"experiment_id": "exp-9", "display_name": "recpipe"}
    cli_main(["schedule", "--host", fake_kfp, "--raw-inputs", "r", "--dataset-root", "d", "--catchup"])
    posts = [(p, b) for m, p, b in FakeKfp.requests if m == "POST"]
    assert [p for p, _ in posts] == ["/apis/v2beta1/recurringruns"]
    assert posts[0][1]["experiment_id"] == "exp-9"
    assert posts[0][1].get("no_catchup") in (False, None)


@pytest.mark.parametrize("cron,want", [("0 3 * * *", "0 0 3 * * *"), ("30 0 3 * * *", "30 0 3 * * *")])
def test_kfp_cron(cron, want):
    assert kfp_cron(cron) == want


def test_kfp_cron_rejects_bad_field_count():
    with pytest.raises(ValueError, match="expected 5 fields"):
        kfp_cron("0 3 *")
