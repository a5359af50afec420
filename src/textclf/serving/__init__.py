"""The torch-free serving layer: text -> ids -> ONNX Runtime, exactly as the model was trained.

Imports numpy, tiktoken and onnxruntime only, so `textclf predict` and a serving image need
neither torch nor scikit-learn.
"""
