"""Exporting facezoo models to other runtimes: :func:`export_onnx` (needs ``pip install 'facezoo[onnx]'``)."""

from facezoo.export.onnx import MissingDependencyError, export_onnx

__all__ = ["export_onnx", "MissingDependencyError"]
