"""Kimina's own ``KiminaClient`` (kimina-client 0.2.1), used the way its users use it.

    python kimina_sync.py REQUEST.json

Run by a Python that has kimina-client installed (the tests' cached 3.12 venv), not by the
project's. REQUEST.json::

    {"url": str, "api_key": str | null, "n_retries"?: int,
     "checks": [{"timeout": int, "snippets": [{"id", "code"}], "batch_size"?: int, "max_workers"?: int}]}

Calls ``health()``, then ``check(...)`` once per entry of ``checks``, in order. Prints one JSON
document on stdout::

    {"health": <what health() returned>,
     "checks": [{"order": [id, ...], "results": {id: {"status", "raw"}}}]}

where ``status`` is the client's own ``analyze().status`` and ``raw`` the result as the client
parsed it (``model_dump()``).
"""

import json
import sys

# kimina_client logs to the stdout it sees at import (its "kimina-client" logger): keep the
# real stdout for the one JSON document.
out, sys.stdout = sys.stdout, sys.stderr

from kimina_client import CheckResponse, KiminaClient, Snippet  # noqa: E402


def report(reply: CheckResponse) -> dict:
    return {
        "order": [r.id for r in reply.results],
        "results": {r.id: {"status": r.analyze().status.value, "raw": r.model_dump()} for r in reply.results},
    }


def main() -> None:
    with open(sys.argv[1]) as f:
        request = json.load(f)
    client = KiminaClient(api_url=request["url"], api_key=request["api_key"], n_retries=request.get("n_retries", 3))
    document = {"health": client.health(), "checks": []}
    for check in request["checks"]:
        reply = client.check(
            [Snippet(id=s["id"], code=s["code"]) for s in check["snippets"]],
            timeout=check["timeout"],
            batch_size=check.get("batch_size", 8),
            max_workers=check.get("max_workers", 5),
            show_progress=False,
        )
        document["checks"].append(report(reply))
    json.dump(document, out)
    out.write("\n")


if __name__ == "__main__":
    main()
