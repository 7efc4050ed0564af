"""Kimina's own ``AsyncKiminaClient`` (kimina-client 0.2.1), used the way its users use it.

    python kimina_async.py REQUEST.json

The same REQUEST.json and output as ``kimina_sync.py``; the client is closed at the end.
"""

import asyncio
import json
import sys

# kimina_client logs to the stdout it sees at import: keep the real one for the JSON document.
out, sys.stdout = sys.stdout, sys.stderr

from kimina_client import AsyncKiminaClient, CheckResponse, Snippet  # noqa: E402


def report(reply: CheckResponse) -> dict:
    return {
        "order": [r.id for r in reply.results],
        "results": {r.id: {"status": r.analyze().status.value, "raw": r.model_dump()} for r in reply.results},
    }


async def main() -> None:
    with open(sys.argv[1]) as f:
        request = json.load(f)
    client = AsyncKiminaClient(api_url=request["url"], api_key=request["api_key"],
                               n_retries=request.get("n_retries", 3))
    try:
        document = {"health": await client.health(), "checks": []}
        for check in request["checks"]:
            reply = await client.check(
                [Snippet(id=s["id"], code=s["code"]) for s in check["snippets"]],
                timeout=check["timeout"],
                batch_size=check.get("batch_size", 8),
                max_workers=check.get("max_workers", 5),
                show_progress=False,
            )
            document["checks"].append(report(reply))
    finally:
        await client.close()
    json.dump(document, out)
    out.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
