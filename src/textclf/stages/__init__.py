"""The seven pipeline stages, one module each, each exposing ``run(params, paths)``.

Stages import the core, serving and modeling layers, never each other.
"""
