"""Built-in targets (imported as edlc.targets); each module registers itself."""

from edlc.targets import arm, cuda, mcu, standalone, x86  # noqa: F401
