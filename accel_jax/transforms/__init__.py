"""Building blocks: one module per kind of transformation."""
