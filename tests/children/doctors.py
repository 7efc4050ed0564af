"""A child with doctor contributors that report, fail and misreport: ``python -m tests.children.doctors``.

``healthy`` reports an ok and a warning item, ``broken`` raises, ``confused`` returns
something that is not a ``DoctorItem``, and ``late`` (registered after them) still reports.
"""

from __future__ import annotations

from collections.abc import Iterator

from lean_worker_child import WorkerApp
from lean_worker_protocol.probe import DoctorItem

app = WorkerApp("doctors", version="2.0")


@app.doctor
def healthy() -> Iterator[DoctorItem]:
    yield DoctorItem("doctors.disk", "ok", "scratch space present", data={"free_mib": "512"})
    yield DoctorItem("doctors.cache", "warning", "cache is cold", hint="run a warm-up")


@app.doctor
def broken() -> list[DoctorItem]:
    raise RuntimeError("licence file unreadable")


@app.doctor
def confused() -> list[DoctorItem]:
    return ["not an item"]  # type: ignore[list-item]


@app.doctor
def late() -> list[DoctorItem]:
    return [DoctorItem("doctors.late", "ok", "still asked after the broken ones")]


if __name__ == "__main__":
    app.serve()
