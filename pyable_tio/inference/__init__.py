"""Inference: whole volumes patch by patch, and predictions back to native space.

The grid inference's names are importable from here too (``from pyable_tio.inference import
inference_loader``, as before the package had folders); native space is in :mod:`.native`.
"""

from .grid import GridInference, SubjectGridAggregator, inference_loader, predict_subject

__all__ = ['GridInference', 'SubjectGridAggregator', 'inference_loader', 'predict_subject']
