"""Datasets over the subjects: the seed's dict dataset, collation, MONAI datasets."""
