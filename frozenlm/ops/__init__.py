"""Tensor primitives that models and data both use (layer 1: they import only torch and layer 0)."""
