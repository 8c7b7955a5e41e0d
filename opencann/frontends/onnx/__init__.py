"""The ONNX frontend: ONNX models in (opsets 1-28, external data, subgraphs), IR graphs out and back."""
from opencann.frontends.onnx.exporter import export_model
from opencann.frontends.onnx.importer import import_onnx, load_model

__all__ = ["export_model", "import_onnx", "load_model"]
