"""Grids and spaces: the sampling grid, the reference choice, registration transforms, alignment."""
