"""edlc's own lowering rules: ops TVM's converters lack or get wrong."""

from __future__ import annotations

import edlc.lower.control_flow  # noqa: F401  If, Loop, Scan
import edlc.lower.recurrent  # noqa: F401  RNN, GRU, LSTM
