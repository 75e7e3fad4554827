"""Manifests checked before any voxel is read (headers), and validation of files and data."""
