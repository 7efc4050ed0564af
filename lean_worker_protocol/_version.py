"""The version of lean-worker: the one place it is written.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``), so the package metadata, the
parent's ``__version__``, the first-party children's handshake and the CLI all agree. A
literal here, not ``importlib.metadata`` at run time: that import and lookup cost a child
about 15-20 ms of start-up (``python -X importtime``), on every spawn.
"""

VERSION = "0.1.0"
