"""Interoperability: models trained elsewhere, imported into stpm-edge's checkpoint format."""
