"""``stpm-run``: video sources (URIs), the bounded capture → inference → render pipeline, and its outputs."""
