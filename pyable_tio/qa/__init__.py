"""QA sheet of a manifest: thumbnails and scores of every subject in one HTML file, worst first.

Modules: :mod:`~pyable_tio.qa.views` (slices and their patient-axis letters),
:mod:`~pyable_tio.qa.shift` (the NMI shift search), :mod:`~pyable_tio.qa.scores` (the
findings: alignment, label placement, flags), :mod:`~pyable_tio.qa.row` (a subject's row),
:mod:`~pyable_tio.qa.render` (PNG thumbnails, Pillow), :mod:`~pyable_tio.qa.sheet` (HTML, CSV
and JSON) and :mod:`~pyable_tio.qa.report` (:func:`~pyable_tio.qa.report.qa_sheet`, the entry point).
"""
