"""A client shaped like Kimina's old ``Lean4Client`` (copied into many projects), on aiohttp.

    python lean4client_old.py REQUEST.json

What it does on the wire, as the old client did: ``GET /`` (its connection test, expecting
``{"status": "ok"}``), then ``POST /verify`` with ``{"codes": [{"custom_id", "proof"}],
"timeout", "infotree_type": null, "disable_cache": false}`` and the header
``Authorization: Bearer <key>``, where a missing key is written as the string ``None``
(``f"Bearer {self.api_key}"``). Like the old client it does not check the HTTP status: it
reads the body as JSON, whatever the status. One attempt (the old client retried with
backoff; the tests want each request once).

REQUEST.json: ``{"url", "api_key": str | null, "timeout": int, "codes": [{"custom_id",
"proof"}]}``. Prints ``{"probe": {"status", "json"}, "verify": {"status", "json"}}``.
"""

import asyncio
import json
import sys
from urllib.parse import urljoin

import aiohttp


async def query(url: str, api_key: str | None, method: str, endpoint: str, body: dict | None = None) -> dict:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": f"Bearer {api_key}",  # "Bearer None" without a key, as the old client sent
    }
    async with aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=3600)) as session:
        async with session.request(method, urljoin(url, endpoint), headers=headers, json=body) as response:
            return {"status": response.status, "json": await response.json()}


async def main() -> None:
    with open(sys.argv[1]) as f:
        request = json.load(f)
    url, key = request["url"], request["api_key"]
    probe = await query(url, key, "get", "/")
    verify = await query(url, key, "post", "/verify", {
        "codes": request["codes"], "timeout": request["timeout"], "infotree_type": None, "disable_cache": False,
    })
    json.dump({"probe": probe, "verify": verify}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
