"""Talk to ``lean-worker serve`` over HTTP: Kimina's route, the native NDJSON stream, metrics.

    python -m examples.service.run                         # starts a server on a free port
    python -m examples.service.run http://127.0.0.1:12332  # or uses yours (`lean-worker serve --fixtures`)

The server's access log lines go to its stderr, which is this script's.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from lean_worker_service.wire import EndLine, Line

SNIPPETS = Path(__file__).resolve().parents[2] / "lean" / "snippets"
NAMES = ["ok", "sorry", "type_error"]
SERVE = ["serve", "--port", "0", "--fixtures", "-j", "2", "--timeout", "10"]


def start_server() -> tuple[subprocess.Popen[str], str]:
    """``lean-worker serve`` on a free port; its URL is in the line it prints once it serves."""
    server = subprocess.Popen([sys.executable, "-m", "lean_worker.cli", *SERVE], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    for line in server.stdout:  # ends if the server exits (status 2: no toolchain, port taken...)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            print(line.strip())
            return server, found.group(1)
    raise SystemExit(f"the server exited {server.wait()} before it listened")


def stop_server(server: subprocess.Popen[str]) -> None:
    """SIGTERM: the server stops listening, lets running requests finish, closes its pool."""
    server.send_signal(signal.SIGTERM)
    try:
        status = server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        status = server.wait()
    print(f"server stopped: exit status {status}")


def kimina_status(item: dict) -> str:
    """What kimina-client's ``ReplResponse.analyze()`` makes of one ``/api/check`` result.
    This is the client's rule (kimina-client 0.2.1), not the server's; its sixth status,
    ``repl_error``, is for a REPL failure this server never reports."""
    if item.get("error") is not None:
        return "timeout_error" if "timed out" in item["error"] else "server_error"
    response = item["response"]
    if any(m["severity"] == "error" for m in response.get("messages") or []):
        return "lean_error"
    return "sorry" if response.get("sorries") else "valid"


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError(f"{name}{labels}")


def walk_through(url: str) -> None:
    snippets = [{"id": name, "code": (SNIPPETS / f"{name}.lean").read_text()} for name in NAMES]
    with httpx.Client(base_url=url, timeout=120) as http:
        print(f"GET /health: {http.get('/health').json()}")

        # What kimina-client's KiminaClient.check() posts; the results come back in input order.
        results = http.post("/api/check", json={"snippets": snippets, "timeout": 10}).json()["results"]
        print("POST /api/check:")
        for item in results:
            print(f"  {item['id']}: {kimina_status(item)}")
        [hole] = results[NAMES.index("sorry")]["response"]["sorries"]
        print(f"  the sorry at {hole['pos']['line']}:{hole['pos']['column']} has the goal {hole['goal']!r}")

        # The native route: one typed NDJSON line per snippet as it finishes, then an end line.
        print("POST /v1/check:")
        with http.stream("POST", "/v1/check", json={"snippets": snippets, "sorry_goals": True}) as reply:
            for raw in reply.iter_lines():
                line = msgspec.json.decode(raw, type=Line)
                if isinstance(line, EndLine):
                    print(f"  end: items={line.items} verdicts={dict(sorted(line.verdicts.items()))}")
                else:  # completion order: it differs from run to run
                    print(f"  line {line.index} {line.id}: {line.result.verdict if line.result else line.error.code}")

        text = http.get("/metrics").text
        checks = {v: metric(text, "lean_worker_checks_total", verdict=v) for v in ("ok", "sorry", "errors", "failed")}
        print(f"GET /metrics: lean_worker_checks_total {' '.join(f'{v}={n:g}' for v, n in checks.items())}")
        print(f"  lean_worker_workers {metric(text, 'lean_worker_workers'):g}, "
              f"lean_worker_up {metric(text, 'lean_worker_up'):g}")


def main() -> None:
    if len(sys.argv) > 1:
        walk_through(sys.argv[1])
        return
    server, url = start_server()
    try:
        walk_through(url)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
