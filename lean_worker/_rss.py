"""Memory of a child's whole process tree.

Summed RSS over a tree double-counts pages the processes share (one probe: 718 MiB summed
against 306 MiB PSS), so RSS is only the cheap first look: a policy acts on a breach only
after PSS (proportional set size, each shared page split among its users) confirms it.
Samples that cannot be taken are reported as ``None``, never as "under the limit".
"""

from __future__ import annotations

import os
import time

import psutil

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TREE_REFRESH_S = 1.0


class TreeMemory:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pids: list[int] = [pid]
        self._refreshed = 0.0

    def _tree(self) -> list[int]:
        now = time.monotonic()
        if now - self._refreshed >= _TREE_REFRESH_S:
            try:
                proc = psutil.Process(self.pid)
                self._pids = [self.pid, *(c.pid for c in proc.children(recursive=True))]
            except psutil.Error:
                self._pids = [self.pid]
            self._refreshed = now
        return self._pids

    def rss(self) -> int | None:
        """Summed resident set size of the child and its descendants, in bytes."""
        total = 0
        seen = False
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/statm", "rb") as fh:
                    total += int(fh.read().split()[1]) * _PAGE
                seen = True
            except (OSError, ValueError, IndexError):
                continue
        return total if seen else None

    def pss(self) -> int | None:
        """Summed proportional set size (shared pages split among their users), in bytes."""
        self._refreshed = 0.0
        total = 0
        seen = False
        for pid in self._tree():
            try:
                total += psutil.Process(pid).memory_full_info().pss
                seen = True
            except (psutil.Error, AttributeError):
                continue
        return total if seen else None

    def over(self, limit: int) -> tuple[bool, int | None, int | None]:
        """(breach, rss, pss): RSS first; PSS only when RSS is above the limit.

        When PSS cannot be read (no smaps access) the RSS breach stands: an unconfirmed
        breach is acted on, never taken as proof that the tree is under the limit.
        """
        rss = self.rss()
        if rss is None or rss <= limit:
            return False, rss, None
        pss = self.pss()
        return (pss > limit if pss is not None else True), rss, pss
