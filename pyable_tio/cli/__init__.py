"""The ``pyable-tio`` command line: ``validate``, ``cache``, ``qa`` and ``info``."""
