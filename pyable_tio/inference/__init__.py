"""Inference: whole volumes patch by patch, and predictions back to native space."""
