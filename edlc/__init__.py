"""edlc, the efficient deep learning compiler.

    import edlc
    m = edlc.compile("model.onnx", target="x86", input_shapes={"x": (1, 3, 224, 224)})
    outs = m.run({"x": array})
    m.export("out_dir"); m2 = edlc.load("out_dir")
"""

__version__ = "0.1.0"

from edlc.driver import compile
from edlc.errors import EdlcError
from edlc.frontend.onnx import load_onnx
from edlc.ir import Graph, Node, TensorType, Value
from edlc.runtime import Module, load

__all__ = ["EdlcError", "Graph", "Module", "Node", "TensorType", "Value", "compile", "load", "load_onnx"]
