"""wordstat: word statistics computed in a supervised worker child this package ships.

``commands`` declares the typed commands, ``worker`` serves them (the ``wordstat-worker``
console script), ``client`` calls them (the ``wordstat`` console script).
"""

__version__ = "1.0.0"
