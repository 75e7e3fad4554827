"""Reading what a manifest path points at: NIfTI, DICOM, the pyable/SimpleITK seam, integrity checks, atomic writes."""
