"""The worker child: the ``wordstat-worker`` console script, started by ``client``.

It imports the child runtime and the protocol only, never the parent package.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator

from lean_worker_child import RequestContext, WorkerApp
from lean_worker_protocol.probe import DoctorItem

from . import __version__
from .commands import STATS, TOP, Stats, Text, TopRequest, TopSummary, WordCount

WORD = re.compile(r"[a-z']+")
STOPWORDS = frozenset({"a", "an", "and", "in", "is", "of", "the", "to"})

app = WorkerApp("wordstat", version=__version__)


@app.handler(STATS)
def stats(request: Text, ctx: RequestContext) -> Stats:
    words = WORD.findall(request.text.lower())
    return Stats(words=len(words), distinct=len(set(words)), longest=max(words, key=len, default=""))


@app.handler(TOP)
def top(request: TopRequest, ctx: RequestContext) -> TopSummary:
    counts = Counter(w for w in WORD.findall(request.text.lower()) if w not in STOPWORDS)
    for word, count in counts.most_common(request.n):
        ctx.emit(WordCount(word, count))
    return TopSummary(distinct=len(counts))


@app.doctor
def wordstat_doctor() -> Iterator[DoctorItem]:
    """What ``lean-worker doctor --sibling wordstat-worker`` shows about this app."""
    yield DoctorItem("wordstat.stopwords", "ok", f"{len(STOPWORDS)} stop words", data={"count": str(len(STOPWORDS))})
    yield DoctorItem("wordstat.python", "ok", f"the worker runs on {sys.executable}", data={"python": sys.executable})


def main() -> None:
    app.serve()  # never returns; run by hand it exits with status 2 (it needs a parent)


if __name__ == "__main__":  # python -m wordstat_app.worker: the form a WORDSTAT_WORKER override may use
    main()
