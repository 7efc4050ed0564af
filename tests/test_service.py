"""The HTTP service (``lean-worker serve``): a real server on 127.0.0.1, real HTTP, real Lean.

Kimina's own clients run against it in ``test_service_kimina.py``; here: bad input, limits,
isolation of a crash, disconnects, deadlines, metrics, the native API and sessions.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lean_worker_protocol.lean_session import RunResult, StartResult
from lean_worker_service.wire import EndLine, ItemLine, Line

from tests.service_server import Server

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = {p.stem: p.read_text() for p in (ROOT / "lean" / "snippets").glob("*.lean")}
OK = "prelude\nimport LwFix.Nat\ntheorem t : Eq N.two N.two := Eq.refl\n"

pytestmark = pytest.mark.timeout(180)


def _metrics(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _check(url: str, snippets: list[tuple[str, str]], timeout: float = 10, **extra: object) -> httpx.Response:
    body = {"snippets": [{"id": i, "code": c} for i, c in snippets], "timeout": timeout, **extra}
    return httpx.post(url + "/api/check", json=body, timeout=120)


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    with Server("--fixtures", "-j", "2", "--timeout", "10", "--max-body-mb", "1", "--max-snippets", "64") as running:
        yield running


def test_a_crashing_snippet_fails_alone_and_the_batch_and_the_next_request_are_answered(server) -> None:  # type: ignore[no-untyped-def]
    names = ["ok", "crash", "sorry", "type_error", "ok"]
    reply = _check(server.url, [(f"{n}-{i}", SNIPPETS[n]) for i, n in enumerate(names)])
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert [r["id"] for r in results] == [f"{n}-{i}" for i, n in enumerate(names)]  # input order
    crash = results[1]
    assert "response" not in crash and crash["error"].startswith("lean.crashed:") and "timed out" not in crash["error"]
    for item in (results[0], results[2], results[3], results[4]):
        assert "error" not in item and item["response"]["env"] == 0
    assert results[0]["response"]["messages"] == []
    [sorry] = results[2]["response"]["sorries"]
    assert sorry["goal"].endswith("⊢ Eq (m.add n) (n.add m)") and sorry["pos"] == {"line": 7, "column": 68}
    assert [m["severity"] for m in results[3]["response"]["messages"]] == ["error"]
    again = _check(server.url, [("after", SNIPPETS["ok"])]).json()["results"]
    assert again[0]["response"]["messages"] == []


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (b"{not json", 400, "service.bad_json", "not JSON"),
        (b'{"snippets": [{"id": 1, "code": "x"}]}', 422, "service.bad_request", "$.snippets[0].id"),
        (b'{"snippets": "x"}', 422, "service.bad_request", "$.snippets"),
        (b'{"snippets": []}', 422, "service.bad_request", "$.snippets"),
        (b'{"snippets": [{"id": "a", "code": "x"}], "timeout": -1}', 422, "service.bad_request", "$.timeout"),
        (b'{"snippets": [{"id": "a", "code": "x"}], "timeout": "5"}', 422, "service.bad_request", "$.timeout"),
        (b'{"codes": [{"custom_id": "a"}]}', 422, "service.bad_request", "snippets"),
    ],
)
def test_bad_bodies_get_a_4xx_with_a_json_error_that_names_the_field(server, body, status, code, says) -> None:  # type: ignore[no-untyped-def]
    reply = httpx.post(server.url + "/api/check", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["code"] == code and says in error["message"]
    assert reply.json()["detail"] == error["message"]


def test_an_oversize_body_is_413_whether_or_not_it_declares_its_length(server) -> None:  # type: ignore[no-untyped-def]
    code = "prelude\n-- " + "x" * (2 * 1024 * 1024) + "\n"
    declared = httpx.post(server.url + "/api/check", json={"snippets": [{"id": "big", "code": code}]}, timeout=30)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "service.body_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(40):
            yield b" " * 65536

    streamed = httpx.post(server.url + "/api/check", content=chunks(), timeout=30)
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "service.body_too_large"
    many = _check(server.url, [(str(i), OK) for i in range(65)])
    assert many.status_code == 413 and many.json()["error"]["code"] == "service.too_many_snippets"
    assert _check(server.url, [("fine", OK)]).status_code == 200


def test_unknown_routes_and_methods_are_json_errors(server) -> None:  # type: ignore[no-untyped-def]
    missing = httpx.get(server.url + "/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "service.not_found"
    wrong = httpx.get(server.url + "/api/check", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "service.method_not_allowed"


def test_both_kimina_check_paths_and_the_old_verify_routes_answer(server) -> None:  # type: ignore[no-untyped-def]
    for path in ("/api/check", "/api/check/"):
        reply = httpx.post(server.url + path, json={"snippets": [{"id": "a", "code": OK}]}, timeout=30)
        assert reply.status_code == 200 and reply.json()["results"][0]["response"]["messages"] == []
    for path in ("/verify", "/one_pass_verify_batch"):
        body = {"codes": [{"custom_id": 7, "proof": OK}, {"custom_id": "b", "code": OK}, {"custom_id": "c"}],
                "infotree_type": "original"}
        reply = httpx.post(server.url + path, json=body, headers={"Authorization": "Bearer None"}, timeout=30)
        assert reply.status_code == 200
        assert reply.headers["x-lean-worker-ignored"] == "infotree"
        first, second, third = reply.json()["results"]
        assert (first["custom_id"], first["error"], first["response"]["messages"]) == (7, None, [])
        assert isinstance(first["response"]["time"], float)
        assert (second["custom_id"], second["error"]) == ("b", None)
        assert third["custom_id"] == "c" and third["response"] is None and "neither" in third["error"]


def test_the_native_check_streams_one_typed_line_per_snippet_then_an_end_line(server) -> None:  # type: ignore[no-untyped-def]
    body = {"snippets": [{"id": "ok", "code": SNIPPETS["ok"]}, {"id": "sorry", "code": SNIPPETS["sorry"]},
                         {"id": "crash", "code": SNIPPETS["crash"]}], "sorry_goals": True}
    lines = []
    with httpx.stream("POST", server.url + "/v1/check", json=body, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
        for raw in reply.iter_lines():
            lines.append(msgspec.json.decode(raw, type=Line))
    *items, end = lines
    assert isinstance(end, EndLine) and end.items == 3
    assert all(isinstance(i, ItemLine) for i in items) and sorted(i.index for i in items) == [0, 1, 2]
    by_id = {i.id: i for i in items}
    assert by_id["ok"].result is not None and by_id["ok"].result.verdict == "ok"
    hole = by_id["sorry"].result.holes[0]  # type: ignore[union-attr]
    assert hole.goal.endswith("⊢ Eq (m.add n) (n.add m)")
    assert by_id["crash"].result is None and by_id["crash"].error.code == "lean.crashed"  # type: ignore[union-attr]
    assert end.verdicts == {"ok": 1, "sorry": 1, "failed": 1} and end.errors == {"lean.crashed": 1}


def test_a_proof_is_found_step_by_step_through_the_session_routes_with_states_passed_by_value(server) -> None:  # type: ignore[no-untyped-def]
    post = lambda path, body: httpx.post(server.url + path, content=msgspec.json.encode(body), timeout=60)  # noqa: E731
    started = post("/v1/session/start", {"header": "prelude\nimport LwFix.Tactic\n"})
    assert started.status_code == 200, started.text
    env = msgspec.json.decode(started.content, type=StartResult).env
    ran = post("/v1/session/run", {"env": env, "command": "theorem t (p q : Prop) (hp : p) (hq : q) : And p q := sorry"})
    assert ran.status_code == 200, ran.text
    [hole] = msgspec.json.decode(ran.content, type=RunResult).sorries
    assert hole.goals == ["p q : Prop\nhp : p\nhq : q\n⊢ And p q"]
    state = msgspec.to_builtins(hole.state)
    for tactic, status in (("constructor", "incomplete"), ("exact hp", "incomplete"), ("exact hq", "complete")):
        step = post("/v1/session/apply", {"state": state, "tactic": tactic})
        assert step.status_code == 200 and step.json()["status"] == status, step.text
        state = step.json()["state"]
    forged = {**msgspec.to_builtins(hole.state), "tactics": ["exact hp"]}
    refused = post("/v1/session/goals", {"state": forged})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "lean.state_invalid"


def test_metrics_parse_as_prometheus_text_and_their_counters_move_with_the_checks(server) -> None:  # type: ignore[no-untyped-def]
    before = _metrics(server.url)
    _check(server.url, [("a", SNIPPETS["ok"]), ("b", SNIPPETS["type_error"]), ("c", SNIPPETS["sorry"])])
    after = _metrics(server.url)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("lean_worker_checks_total", verdict="ok") == 1
    assert moved("lean_worker_checks_total", verdict="errors") == 1
    assert moved("lean_worker_checks_total", verdict="sorry") == 1
    assert moved("lean_worker_check_seconds_count") == 3
    assert moved("lean_worker_http_requests_total", route="/api/check", status="200") == 1
    assert after[("lean_worker_workers", ())] == 2
    assert after[("lean_worker_up", ())] == 1
    assert 0 < after[("lean_worker_warm_hit_ratio", ())] <= 1
    assert after[("lean_worker_pool_rss_bytes", ())] > 0
    assert ("lean_worker_queue_depth", ()) in after and ("lean_worker_workers_busy", ()) in after


def test_health_and_status_say_the_pool_can_serve(server) -> None:  # type: ignore[no-untyped-def]
    for path in ("/", "/health"):
        assert httpx.get(server.url + path, timeout=10).json() == {"status": "ok"}
    status = httpx.get(server.url + "/v1/status", timeout=10).json()
    assert status["workers"] == 2 and status["lean"]["version"] == "4.35.0" and status["auth"] is False
    assert status["sandbox"] == "required: active"  # the service's default: untrusted input


def test_every_request_has_a_structured_access_log_line(server) -> None:  # type: ignore[no-untyped-def]
    reply = httpx.post(server.url + "/api/check", json={"snippets": [{"id": "a", "code": OK}]},
                       headers={"x-request-id": "trace-me"}, timeout=30)
    assert reply.headers["x-request-id"] == "trace-me"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any('"trace-me"' in line for line in server.access_log()):
        time.sleep(0.05)
    line = msgspec.json.decode(next(li for li in server.access_log() if '"trace-me"' in li))
    assert (line["path"], line["status"], line["snippets"], line["verdicts"]) == ("/api/check", 200, 1, {"ok": 1})


def test_with_a_key_every_route_but_health_needs_it_and_bearer_none_is_refused() -> None:
    with Server("--fixtures", "-j", "1", "--api-key", "s3cret") as server:
        body = {"snippets": [{"id": "a", "code": OK}]}
        for headers in ({}, {"Authorization": "Bearer None"}, {"Authorization": "Bearer wrong"}):
            refused = httpx.post(server.url + "/api/check", json=body, headers=headers, timeout=30)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "service.unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
        assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
        assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
        ok = httpx.post(server.url + "/api/check", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["results"][0]["response"]["messages"] == []


def test_a_full_queue_answers_429_with_retry_after_and_admits_again_once_it_drains() -> None:
    with Server("--fixtures", "-j", "1", "--queue-limit", "3") as server:
        hangs = [(f"h{i}", SNIPPETS["hang"]) for i in range(2)]
        first: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: first.append(_check(server.url, hangs, timeout=2)))
        runner.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and httpx.get(server.url + "/v1/status", timeout=5).json()["admitted"] < 2:
            time.sleep(0.02)
        full = _check(server.url, [("a", OK), ("b", OK)])
        assert full.status_code == 429 and full.json()["error"]["code"] == "service.queue_full"
        assert 1 <= int(full.headers["retry-after"]) <= 60
        fits = _check(server.url, [("c", OK)])  # one more still fits the limit of 3
        assert fits.status_code == 200
        runner.join(60)
        assert [r["error"].split(":")[0] for r in first[0].json()["results"]] == ["lean.timeout", "lean.timeout"]
        assert _check(server.url, [("a", OK), ("b", OK)]).status_code == 200
        rejected = _metrics(server.url)[("lean_worker_rejected_snippets_total", (("code", "service.queue_full"),))]
        assert rejected == 2


def test_the_request_deadline_answers_unfinished_snippets_as_timed_out_and_the_worker_serves_on() -> None:
    with Server("--fixtures", "-j", "1", "--timeout", "60", "--request-deadline", "2") as server:
        started = time.monotonic()
        reply = _check(server.url, [("spin", SNIPPETS["hang"]), ("ok", OK)], timeout=60)
        took = time.monotonic() - started
        assert reply.status_code == 200 and took < 30
        spin, ok = reply.json()["results"]
        assert spin["error"].startswith("service.deadline:") and "timed out" in spin["error"]
        assert "timed out" in ok["error"]  # it never got the worker before the deadline
        after = _check(server.url, [("ok", OK)], timeout=10).json()["results"][0]
        assert after["response"]["messages"] == []


def _spinning(server: Server) -> list[int]:
    """Descendants of the server burning a core (the `hang` snippet's Lean process)."""
    procs = [psutil.Process(pid) for pid in server.tree()]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.NoSuchProcess:
            pass
    time.sleep(0.5)
    busy = []
    for p in procs:
        try:
            if p.cpu_percent(None) > 50:
                busy.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return busy


def test_a_client_that_goes_away_mid_batch_has_its_snippets_cancelled_and_other_clients_are_unaffected() -> None:
    with Server("--fixtures", "-j", "2", "--timeout", "120") as server:
        base = server.tree()
        gone = threading.Thread(target=_leave_early, args=(server.url,))
        gone.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _spinning(server):
            time.sleep(0.1)
        # Meanwhile another client's batch runs on the other worker, untouched.
        other = _check(server.url, [(f"o{i}", OK) for i in range(6)], timeout=10)
        assert [r["response"]["messages"] for r in other.json()["results"]] == [[]] * 6
        gone.join(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _spinning(server):
            time.sleep(0.2)
        assert not _spinning(server), "the abandoned snippet's Lean process still runs"
        metrics = _metrics(server.url)
        assert metrics[("lean_worker_cancelled_snippets_total", ())] == 4
        assert ("lean_worker_admitted_snippets", ()) in metrics and metrics[("lean_worker_admitted_snippets", ())] == 0
        after = _check(server.url, [("after", OK)], timeout=10).json()["results"][0]
        assert after["response"]["messages"] == []
        # What runs now is the pool as it was (a worker replaced at most): nothing piled up.
        assert len(server.tree()) <= len(base) + 2
        line = next(li for li in server.access_log() if '"cancelled"' in li)
        assert msgspec.json.decode(line)["cancelled"] == 4


def _leave_early(url: str) -> None:
    body = {"snippets": [{"id": "spin", "code": SNIPPETS["hang"]}] + [{"id": f"q{i}", "code": SNIPPETS["hang"]}
                                                                       for i in range(3)], "timeout": 120}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/check", json=body, timeout=httpx.Timeout(30, read=3))


def test_the_core_never_imports_the_service_or_its_web_framework() -> None:
    script = ("import sys, lean_worker, lean_worker.lean, lean_worker.verify, lean_worker.session, lean_worker.cli\n"
              "print(sorted(m for m in ('lean_worker_service', 'starlette', 'uvicorn', 'prometheus_client') "
              "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    wire = "import sys, lean_worker_service.wire\nprint('starlette' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", wire], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"  # a client decodes the native API without the server's dependencies


def _serve_cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    script = f"{prelude}\nfrom lean_worker.cli import main\nraise SystemExit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_serve_says_in_one_line_what_is_missing_or_wrong_and_exits_2() -> None:
    no_extra = _serve_cli("serve", "--fixtures", prelude="import sys; sys.modules['starlette'] = None")
    assert no_extra.returncode == 2 and no_extra.stderr.strip().count("\n") == 0, no_extra.stderr
    assert "service.not_installed" in no_extra.stderr and "pip install 'lean-worker[service]'" in no_extra.stderr
    bad_port = _serve_cli("serve", "--port", "70000")
    assert bad_port.returncode == 2 and "service.bad_option" in bad_port.stderr and "port" in bad_port.stderr
    no_lean = _serve_cli("serve", "--port", "0", "--lean", "/nonexistent/lean")
    assert no_lean.returncode == 2 and "lean.toolchain_not_found" in no_lean.stderr, no_lean.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = _serve_cli("serve", "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "service.bind_failed" in busy.stderr, busy.stderr


def test_the_listening_socket_is_tcp_so_that_replies_are_sent_without_nagle_delay() -> None:
    from lean_worker_service._serve import _bind

    # asyncio turns TCP_NODELAY on for accepted connections only when the listening socket
    # says IPPROTO_TCP; with protocol 0 every reply waited ~45 ms for a delayed ACK.
    with _bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
