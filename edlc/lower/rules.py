"""edlc's own lowering rules: ops TVM's converters lack or get wrong."""

from __future__ import annotations
