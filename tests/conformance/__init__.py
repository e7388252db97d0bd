"""ONNX backend node-test conformance suite for edlc."""
