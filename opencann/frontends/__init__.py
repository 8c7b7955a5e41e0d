"""Seed layer 2, framework adapters: importers of framework models into the IR (ONNX now; TensorFlow
and PyTorch next) and the adapters that route a framework's execution to opencann."""
