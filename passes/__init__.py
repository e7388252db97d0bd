"""edlc's graph passes (imported as edlc.passes); each module registers its passes.

Import order is the order of the default pipeline: each pass joins it from its min_opt_level.
"""

# isort: off
from edlc.passes import (  # noqa: F401
    quantize,  # first: import-qdq must see DequantizeLinear before constants fold
    fold_constants,
    simplify,
    cse,
    recognize,
    fold_batchnorm,
    layout,
    fuse,
    winograd,  # after fuse: it splits a conv group into input transform, product, output group
    pointwise,  # after fuse: a 1x1 conv group becomes a matmul group between reshapes
    cleanup,
    sparsity,  # only when asked (prune-channels, --sparsity)
    precision,  # only when asked (--quantize fp16|bf16)
)
# isort: on

from edlc.pass_manager import PassManager, PassResult, register_pass

__all__ = ["PassManager", "PassResult", "register_pass"]
