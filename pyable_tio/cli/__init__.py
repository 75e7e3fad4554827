"""The ``pyable-tio`` command line: ``validate``, ``cache`` and ``info``."""
