"""``resnet50 serve --engine ray``: the same app as Ray Serve replicas, as a client sees it.

One deployment for the module (a real local Ray started by the CLI, 2 replicas x 1 thread
behind Ray Serve's proxy on a loopback port): both replicas answer and say so, answers equal
``ResNet50.run``, a killed replica's requests get an answer (200, or a JSON 503 with
Retry-After) and a replacement serves, a replica on other weights is refused in one line, and
SIGTERM answers what is in flight and leaves no Ray process behind. The flag checks run
without Ray.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from resnet50.cli import main
from servers import ServerProcess, expected_predictions

httpx = pytest.importorskip("httpx")

HEADER = "x-resnet50-replica"


@pytest.fixture(scope="module")
def ray_server(model_fp32, tmp_path_factory):
    """``resnet50 serve --engine ray --replicas 2 --threads 1`` on a free loopback port."""
    pytest.importorskip("ray.serve", reason="--engine ray needs Ray Serve (pip install 'resnet50[serve,ray]')")
    pytest.importorskip("psutil", reason="the process checks need psutil (pip install 'resnet50[bench]')")
    srv = ServerProcess(
        tmp_path_factory.mktemp("serve-ray"),
        *("--engine", "ray", "--replicas", "2", "--threads", "1", "--max-wait-ms", "20"),
        start_timeout=600,
    )
    srv.ray_address = re.search(r"Ray Serve on the Ray at (\S+),", srv.stderr).group(1)
    yield srv
    try:  # the last test stops it with SIGTERM; this only cleans up after a failure
        if srv.proc.poll() is None:
            srv.stop(timeout=120)
    finally:
        srv.kill()


def _replica_pids(url: str, rounds: int = 20) -> dict[str, int]:
    """Replica id -> pid of every replica, read from /metrics. Each GET reaches one replica, and
    Ray Serve's router sends a request to the replica with fewer in flight: concurrent GETs
    reach both."""

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.get(f"{url}/metrics") for _ in range(16)))

    pids: dict[str, int] = {}
    for _ in range(rounds):
        for response in asyncio.run(burst()):
            info = re.search(r"^resnet50_model_info\{(.*)\} 1$", response.text, re.M).group(1)
            labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
            assert labels["replica"] == response.headers[HEADER]  # the header and /metrics agree
            pids[labels["replica"]] = int(labels["pid"])
        if len(pids) == 2:
            return pids
    raise AssertionError(f"only replicas {sorted(pids)} answered /metrics in {rounds} bursts")


@pytest.mark.slow
def test_both_replicas_get_traffic_and_say_which_answered(ray_server, sample_photos):
    async def burst():
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=120) as client:
            photos = [p.read_bytes() for p in sample_photos] * 4
            return await asyncio.gather(*(client.post("/v1/classify", content=body) for body in photos))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(responses)
    pids = _replica_pids(ray_server.url)
    assert {r.headers[HEADER] for r in responses} == set(pids)  # both replicas answered
    assert len(set(pids.values())) == 2


@pytest.mark.slow
def test_answers_equal_model_run(ray_server, model_fp32, sample_photos):
    expected = expected_predictions(model_fp32, sample_photos)

    async def send_all():
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/classify", content=p.read_bytes()) for p in sample_photos))

    for response, want in zip(asyncio.run(send_all()), expected):
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == want
    tensor, _ = model_fp32.preprocess([str(p) for p in sample_photos[:2]])
    request = {"inputs": [{"name": "input_tensor:0", "datatype": "FP32", "shape": [2, 3, 224, 224]}]}
    request["inputs"][0]["data"] = tensor.ravel().tolist()
    response = httpx.post(f"{ray_server.url}/v2/models/resnet50/infer", json=request, timeout=120)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    softmax = np.asarray(outputs["softmax_tensor:0"]["data"], np.float32).reshape(2, 1001)
    np.testing.assert_array_equal(softmax, model_fp32.run(tensor)["softmax_tensor:0"])


@pytest.mark.slow
def test_every_endpoint_and_error_is_the_apps(ray_server):
    url = ray_server.url
    page = httpx.get(f"{url}/", timeout=60)
    assert page.status_code == 200 and "<html" in page.text.lower() and HEADER in page.headers
    assert httpx.get(f"{url}/v2/health/ready", timeout=60).json() == {"ready": True}
    assert httpx.get(f"{url}/v2/models/resnet50", timeout=60).json()["name"] == "resnet50"
    bad = httpx.post(f"{url}/v1/classify", content=b"not an image", timeout=60)
    assert bad.status_code == 400 and HEADER in bad.headers
    assert bad.json() == {
        "error": "request body: not a decodable image in a format the server accepts (JPEG, PNG, WebP, BMP, TIFF, PNM)"
    }
    missing = httpx.get(f"{url}/nope", timeout=60)
    assert (missing.status_code, missing.json()) == (404, {"error": "no such endpoint: /nope"})


_OTHER_DRIVER = """
import sys
import ray
from resnet50.apps.serve import ray_serve
from resnet50.apps.serve.run import ServeSettings
from resnet50.core.errors import BackendUnavailableError

ray.init(address=sys.argv[1], log_to_driver=False)
try:
    ray_serve.deploy(
        {"threads": 1},
        "0" * 32,  # the md5 this driver claims to run
        ServeSettings(max_batch=1),
        ray_serve.Scaling(replicas=1, cpus=0.0),  # the 2 CPUs are the module's replicas'
        name="resnet50-other",
        route_prefix="/other",
    )
except BackendUnavailableError as exc:
    from ray import serve

    print("left:", sorted(serve.status().applications))
    print(exc)
"""


@pytest.mark.slow
def test_replica_on_another_model_file_is_refused_in_one_line(ray_server):
    """A second driver joins the same Ray and deploys a replica whose model file is not the driver's."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the CLI's Ray has token authentication (~/.ray/auth_token)
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_DRIVER, ray_server.ray_address],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    left, message = proc.stdout.strip().splitlines()
    assert left == "left: ['resnet50']"  # the refused application is removed, the module's stays
    assert re.fullmatch(
        r"the Ray Serve deployment failed: Ray worker on \S+ loaded \S+\.onnx \(synthetic weights, md5 [0-9a-f]{32}\) "
        r"but the driver runs md5 0{32}; give every node the same file "
        r"\(--model on a shared path, or resnet50 fetch on each node\)",
        message,
    ), message
    assert httpx.get(f"{ray_server.url}/v2/health/ready", timeout=60).status_code == 200  # ours still serves


@pytest.mark.slow
def test_killed_replica_is_replaced_and_its_requests_get_an_answer(ray_server, sample_photos):
    photo = sample_photos[0].read_bytes()
    pids = _replica_pids(ray_server.url)
    victim = sorted(pids)[0]
    answers: list[tuple[int, dict, str]] = []  # status, headers, body of every request sent
    state = {"killed": False, "new": None}

    async def worker(client):
        for _ in range(400):  # bounded even if the replacement never comes
            response = await client.post("/v1/classify", content=photo)  # a lost request raises
            answers.append((response.status_code, response.headers, response.text))
            replica = response.headers.get(HEADER)
            if state["killed"] and response.status_code == 200 and replica not in pids:
                state["new"] = replica
            if state["new"] and sum(a[0] == 200 for a in answers[-8:]) == 8:
                return

    async def load():
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=120) as client:
            tasks = [asyncio.create_task(worker(client)) for _ in range(8)]
            while len(answers) < 16:
                await asyncio.sleep(0.01)
            os.kill(pids[victim], signal.SIGKILL)
            state["killed"] = True
            await asyncio.gather(*tasks)

    asyncio.run(load())
    assert state["new"], "no replacement replica answered"
    lost = [(code, body[:200]) for code, _, body in answers if code not in (200, 503)]
    assert not lost, lost
    unavailable = [(headers, body) for code, headers, body in answers if code == 503]
    assert unavailable, "no request was in flight on the killed replica"
    for headers, body in unavailable:  # not served, and the client is told to retry
        assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
        assert body == (
            '{"error": "no model replica answered this request (one stopped mid-request, or the deployment '
            'is starting or shutting down); retry after 1 s"}'
        )
    assert set(_replica_pids(ray_server.url)) == {sorted(pids)[1], state["new"]}
    after = [httpx.post(f"{ray_server.url}/v1/classify", content=photo, timeout=120) for _ in range(4)]
    assert [r.status_code for r in after] == [200] * 4


@pytest.mark.slow
def test_sigterm_answers_in_flight_requests_and_leaves_no_ray_process(ray_server, model_fp32, sample_photos):
    import psutil

    photo = sample_photos[1].read_bytes()
    expected = expected_predictions(model_fp32, sample_photos[1:2])[0]
    ray_processes = psutil.Process(ray_server.proc.pid).children(recursive=True)
    assert any("raylet" in p.name() for p in ray_processes)
    state = {"ok": 0, "after_term": 0, "term_sent": False}
    bad: list[str] = []

    async def worker(client):
        while True:
            try:
                response = await client.post("/v1/classify", content=photo)
            except httpx.TimeoutException:
                bad.append("timeout: a request hung")
                return
            except httpx.TransportError:  # not accepted: the proxy is gone
                if state["term_sent"]:
                    return
                continue
            if response.status_code == 503 and state["term_sent"]:  # not served: the app is shutting down
                assert response.headers["retry-after"] == "1"
                await asyncio.sleep(0.05)
                continue
            if response.status_code != 200 or response.json()["predictions"] != expected:
                bad.append(f"{response.status_code} {response.text[:200]}")
            state["ok"] += 1
            state["after_term"] += state["term_sent"]

    async def load():
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=120) as client:
            tasks = [asyncio.create_task(worker(client)) for _ in range(6)]
            while state["ok"] < 8:
                await asyncio.sleep(0.01)
            ray_server.proc.send_signal(signal.SIGTERM)
            state["term_sent"] = True
            await asyncio.wait_for(asyncio.gather(*tasks), 300)

    asyncio.run(load())
    code = ray_server.proc.wait(300)
    assert code == 0, ray_server.stderr
    assert not bad, bad
    assert state["after_term"] >= 1, "no request was in flight when SIGTERM arrived"
    lines = ray_server.stderr.strip().splitlines()
    assert lines[-2:] == [
        "resnet50 serve: SIGTERM: shutting the deployment down",
        "resnet50 serve: stopped; the Ray this command started is down",
    ], ray_server.stderr
    assert "Traceback" not in ray_server.stderr
    deadline = time.monotonic() + 60  # Ray's processes exit on their own once the driver stopped them
    while (left := [p for p in ray_processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, p.name()) for p in left]


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- flags, checked before Ray is imported ---


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--replicas", "2"], "--replicas needs --engine ray"),
        (["--address", "auto", "--autoscale", "1:2"], "--address, --autoscale need --engine ray"),
        (["--engine", "ray", "--replicas", "0"], "--replicas must be at least 1, got 0"),
        (["--engine", "ray", "--autoscale", "4"], "--autoscale must be MIN:MAX replicas, e.g. 1:4, got '4'"),
        (["--engine", "ray", "--autoscale", "3:2"], "--autoscale 3:2: need 0 <= MIN <= MAX and MAX >= 1"),
        (["--engine", "ray", "--target-ongoing", "4"], "--target-ongoing must be positive and needs --autoscale"),
    ],
)
def test_ray_flags_are_checked_in_one_line(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"resnet50 serve: error: {message}"]


def test_without_ray_one_line_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    monkeypatch.delitem(sys.modules, "resnet50.apps.serve.ray_serve", raising=False)
    assert main(["serve", "--engine", "ray", "--replicas", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "resnet50 serve: error: resnet50 serve --engine ray needs ray: pip install 'resnet50[serve,ray]'"
    ]


def test_deployment_options_replicas_and_autoscaling():
    pytest.importorskip("ray.serve", reason="needs Ray Serve")
    from resnet50.apps.serve.ray_serve import Scaling, deployment_options
    from resnet50.apps.serve.run import ServeSettings

    settings = ServeSettings(max_batch=8, max_queue=32, graceful_timeout=12.0)
    fixed = deployment_options(Scaling(replicas=3, cpus=2.0), settings)
    assert fixed == {
        "ray_actor_options": {"num_cpus": 2.0},
        "max_ongoing_requests": 32,
        "max_queued_requests": 32,
        "graceful_shutdown_timeout_s": 12.0,
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "num_replicas": 3,
    }
    scaled = deployment_options(Scaling(autoscale=(0, 4), target_ongoing=8.0, gpus=1.0), settings)
    assert "num_replicas" not in scaled and scaled["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert scaled["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
    }
