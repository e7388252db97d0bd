"""Errors users see. Everything a user can cause is an EdlcError with a one-line message
that names the file, node, op and input involved and what was expected; the CLI prints it as
`edlc: error: ...` and exits 2. Anything else is an internal error (exit 1)."""

from __future__ import annotations


class EdlcError(Exception):
    """Base of every user-facing error."""


class ModelError(EdlcError):
    """The model file or graph is malformed (corrupt bytes, dangling values, bad data)."""


class UnsupportedOpError(EdlcError):
    """The model uses ops edlc cannot lower; lists them all at once."""

    def __init__(self, unsupported: list[tuple[str, str, str]]):
        self.unsupported = unsupported  # (node name, op type, domain)
        shown = "; ".join(
            f"node '{n}' op '{op}'" + (f" (domain '{d}')" if d else "") for n, op, d in unsupported[:20]
        )
        more = f" and {len(unsupported) - 20} more" if len(unsupported) > 20 else ""
        super().__init__(f"{len(unsupported)} unsupported node(s): {shown}{more}")


class ShapeError(EdlcError):
    """A shape or type does not fit what an op or the caller expects."""


class InputError(EdlcError):
    """Run-time inputs do not match the model's inputs (names, shapes, dtypes)."""


class TargetError(EdlcError):
    """Unknown target, or options the target does not accept."""


class LoweringError(EdlcError):
    """A node could not be lowered to TVM; names the node and op."""


class ArtifactError(EdlcError):
    """An artifact directory is missing, incomplete or from an incompatible version."""


def first_line(e: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (TVM and protobuf append pages of context),
    or its type name when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception's whole message on one line (onnx's checker splits one sentence over
    several lines), or its type name when it has no message."""
    text = " ".join(str(e).split())
    return text[:limit] if text else type(e).__name__
