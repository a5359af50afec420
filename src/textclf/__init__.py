"""textclf: a reproducible DVC pipeline training a transformer text classifier, shipped as ONNX."""

__version__ = "0.1.0"
