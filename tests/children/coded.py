"""A downstream app whose handler fails with its own coded error: ``python -m tests.children.coded``.

``inventory.reserve`` raises ``OutOfStock`` (code ``inventory.out_of_stock``, the facts
``sku``, ``wanted`` and ``left``) when asked for more than is left, and an exception with a
code nobody registered (``inventory.audit_failed``) for the SKU ``audit``. The parent side of
the app registers a ``RemoteError`` subclass for the first code (``tests/test_remote_errors.py``).
"""

from __future__ import annotations

import msgspec

from lean_worker_child import RequestContext, WorkerApp
from lean_worker_protocol import Call

STOCK = {"apple": 3}


class Reserve(msgspec.Struct, frozen=True):
    sku: str
    wanted: int


RESERVE = Call("inventory.reserve", request=Reserve, response=int)
"""Reserve ``wanted`` items of ``sku``; the answer is how many are left."""


class OutOfStock(Exception):
    code = "inventory.out_of_stock"

    def __init__(self, sku: str, wanted: int, left: int) -> None:
        self.facts = {"sku": sku, "wanted": wanted, "left": left}
        super().__init__(f"inventory.reserve: not enough stock; sku={sku} wanted={wanted} left={left}")


class AuditFailed(Exception):
    code = "inventory.audit_failed"


app = WorkerApp("inventory", version="1.0")


@app.handler(RESERVE)
def reserve(request: Reserve, ctx: RequestContext) -> int:
    if request.sku == "audit":
        raise AuditFailed("inventory.reserve: the audit SKU cannot be reserved")
    left = STOCK.get(request.sku, 0)
    if request.wanted > left:
        raise OutOfStock(request.sku, request.wanted, left)
    STOCK[request.sku] = left - request.wanted
    return STOCK[request.sku]


if __name__ == "__main__":
    app.serve()
