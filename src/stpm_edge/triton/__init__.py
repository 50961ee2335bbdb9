"""Triton Inference Server: the model repository stpm-export writes (:mod:`.repo`) and the
PyTriton server used by the tests (:mod:`.serve`, self-contained). The client side is the
runtime backend :mod:`stpm_edge.runtime.backends.triton`."""
