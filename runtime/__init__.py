"""Conveyor: an async ONNX model server for the KServe v2 / Triton inference protocol."""

__version__ = "0.1.0"
