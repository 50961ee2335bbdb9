"""Applications on top of the inference library: ``stpm-run`` (:mod:`stpm_edge.apps.run`:
sources, the batched pipeline, overlays and outputs) and the demo (:mod:`stpm_edge.apps.demo`)."""
