"""edlc's graph passes (imported as edlc.passes); each module registers its passes."""

from edlc.passes import cleanup, fold_constants  # noqa: F401

from edlc.pass_manager import PassManager, PassResult, register_pass

__all__ = ["PassManager", "PassResult", "register_pass"]
