"""The modeling layer: the network, its bundle and checkpoint, batching, the TF-IDF baseline and
the ONNX graph rewrites. Imports torch; never imports a stage."""
