"""The worker child: ``python -m examples.typed_streaming.worker``, started by a parent.

Run by hand it exits at once with status 2: a child needs the bootstrap facts (its pipes,
its parent's pid) that only a supervising parent passes.
"""

from __future__ import annotations

import re
import time
from collections import Counter

from lean_worker_child import Position, RequestContext, WorkerApp

from .commands import TOKENIZE, TOP_WORDS, Text, Token, TokenizeSummary, TopWordsRequest, WordCount

WORD = re.compile(r"[A-Za-z0-9']+")

app = WorkerApp("wordfreq", version="1.0.0")


class BadTop(ValueError):
    code = "wordfreq.bad_top"  # an exception's ``code`` becomes the error's remote_code


@app.handler(TOKENIZE)
def tokenize(request: Text, ctx: RequestContext) -> TokenizeSummary:
    tokens = empty = 0
    total = len(request.lines)
    for number, line in enumerate(request.lines, start=1):
        ctx.check_cancelled()  # raises Cancelled once the parent gave up on this request
        if not line.strip():
            empty += 1
            ctx.diagnostic(
                "empty line", severity="warning", code="wordfreq.empty_line", position=Position(line=number, column=1)
            )
        for match in WORD.finditer(line):
            ctx.emit(Token(number, match.start() + 1, match.group().lower()))
            tokens += 1
        ctx.progress("tokenize", number, total)
        if request.delay_per_line_s:
            time.sleep(request.delay_per_line_s)
    return TokenizeSummary(lines=total, tokens=tokens, empty_lines=empty)


@app.handler(TOP_WORDS)
def top_words(request: TopWordsRequest, ctx: RequestContext) -> list[WordCount]:
    if request.top < 1:
        raise BadTop(f"top must be at least 1; got {request.top}")
    counts = Counter(m.group().lower() for line in request.lines for m in WORD.finditer(line))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [WordCount(word, count) for word, count in ranked[: request.top]]


if __name__ == "__main__":
    app.serve()
