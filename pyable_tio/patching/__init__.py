"""Patches cut from the volumes' boxes and augmented per patch.

- :mod:`.volume`: the box reader (:class:`~.volume.Volume`), reading only a region of a file.
- :mod:`.split`: which steps of a transform run per patch and which per volume.
- :mod:`.ops`: one class per supported TorchIO transform (kind, parameters, margin, apply).
- :mod:`.augment`: one patch augmented on its box; :mod:`.kernel` (numba) and
  :mod:`.sitk_engine` (SimpleITK, the oracle) resample it.
- :mod:`.cutting`, :mod:`.queue`: the patches of a subject, and the queue.
"""
