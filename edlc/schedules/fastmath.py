"""Vectorizable erf, exp and sigmoid.

LLVM has no vector form of these libm functions on x86: a vectorized `T.erf` or `T.exp`
becomes one scalar `erff` / `expf` call per lane, which made GELU cost more than the matmul it
follows and dominated softmax. They are rewritten here, for float32, as the approximations
TVM's own `topi.fast_erf` / `topi.fast_exp` use (Eigen / Cephes: error around 1e-7, about what
onnxruntime's own kernels have), which vectorize to plain FMAs.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

F32 = "float32"
_EXP_HI = 88.72283905206835  # ln(FLT_MAX)
_EXP_LO = -87.33654475055310  # ln(FLT_MIN)

_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
              -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
             -7.37332916720468e-03, -1.42647390514189e-02)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)


def _c(v: float):
    return tirx.const(v, F32)


def _let(value, body_of):
    var = tirx.Var("t", F32)
    return tirx.Let(var, value, body_of(var))


def erf_fraction(z):
    """(z p(z^2), q(z^2)): erf(z) as their quotient, for z already clipped to [-4, 4]. Given
    apart so that a caller dividing anyway (the int8 GELU epilogue) needs one division."""
    z2 = z * z
    p = _c(_ERF_ALPHA[0])
    for a in _ERF_ALPHA[1:]:
        p = p * z2 + _c(a)
    q = _c(_ERF_BETA[0])
    for b in _ERF_BETA[1:]:
        q = q * z2 + _c(b)
    return z * p, q


def fast_erf_f32(x):
    def body(x):
        num, den = erf_fraction(x)
        return num / den

    return _let(tirx.max(tirx.min(x, _c(4.0)), _c(-4.0)), body)


def fast_exp_f32(x):
    """2^n * p(f) with n = round(x / ln 2), f = x - n ln 2; 0 where float32 exp would be
    denormal (x < -87.33), +inf where it overflows (x > 88.72)."""
    def body(xc):
        def with_n(n):
            def with_f(f):
                y = _c(_EXP_P[0])
                for p in _EXP_P[1:]:
                    y = y * f + _c(p)
                y = y * f * f + f + _c(1.0)
                # 2^(n-1) * 2: n reaches 128 just below the overflow bound
                half = tirx.reinterpret(F32, tirx.Cast("int32", n + _c(126.0)) << 23)
                return half * y * _c(2.0)

            # Cephes' two-part ln 2: n * 0.693359375 is exact in float32
            return _let(xc - n * _c(0.693359375) - n * _c(-2.12194440e-4), with_f)

        return _let(tirx.floor(xc * _c(1.44269504088896341) + _c(0.5)), with_n)

    value = _let(tirx.max(tirx.min(x, _c(_EXP_HI)), _c(_EXP_LO)), body)
    return tirx.Select(x > _c(_EXP_HI), _c(float("inf")),
                       tirx.Select(x < _c(_EXP_LO), _c(0.0), value))


def _rewrite(name: str, x):
    if name == "tirx.erf":
        return fast_erf_f32(x)
    if name == "tirx.exp":
        return fast_exp_f32(x)
    if name == "tirx.sigmoid":
        return _c(1.0) / (_c(1.0) + fast_exp_f32(-x))
    return None


_NAMES = ("tirx.erf", "tirx.exp", "tirx.sigmoid")


def _matches(call) -> bool:
    return getattr(call.op, "name", "") in _NAMES and str(call.ty) == F32


def fast_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every float32 erf, exp and sigmoid replaced by a vectorizable form."""
    found: list = []
    tvm_ffi.structural_walk(func.body, (tvm.ir.Call, lambda c: found.append(_matches(c))))
    if not any(found):
        return func

    def rewrite(call, mutator):
        if _matches(call):
            return _rewrite(call.op.name, mutator.mutate(call.args[0]))
        return mutator.default_mutate(call)

    return tvm_ffi.structural_mutate(func, (tvm.ir.Call, rewrite))


def without_lets(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every `Let` expression substituted into its body: what TVM's FLOP estimator
    accepts (it has no rule for `Let`, which the fast forms above bind their temporaries with)."""
    bound: dict = {}

    def inline(let, mutator):
        bound[let.var] = mutator.mutate(let.value)
        return mutator.mutate(let.body)

    return tvm_ffi.structural_mutate(func, [(tirx.Let, inline), (tirx.Var, lambda v, _: bound.get(v, v))])
