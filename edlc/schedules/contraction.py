"""Register-tiled schedule for contractions: conv2d (NCHW or NHWC, OIHW / OHWI / HWIO weights),
depthwise conv, dense, matmul and batch matmul, with their padding and fused epilogue.

They share one form, `O[s...] += X[...] * Y[...]`, and one good CPU loop nest:

    parallel(outer spatial, j-tile)        <- weight tile packed here when needed
      i-tile                               <- epilogue (bias, residual, activation) here
        reduction loops (c, kh, kw / k)
          i in Xb (unrolled)               <- register block
            j in T (vectorized)            <- vector lanes

`j` is the spatial axis only one factor carries (output channels of a conv, columns of a
matmul), so that factor gives a vector and the other a broadcast scalar that is reused T times;
`i` is an axis only the other factor carries (output width, matmul rows), reusing the vector Xb
times. Xb x T accumulators stay in registers (a local buffer whose j dim is innermost). When the
j factor is not contiguous in j (OIHW / OHWI weights, a transposed matmul operand), the slab
one parallel iteration needs is copied into a j-innermost layout inside the kernel: a read of
the weights that the kernel makes anyway, so the weights can stay constants in any layout.
Depthwise convs (no such j) vectorize the output's innermost axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, tirx

from edlc.schedules.analysis import (
    CPU,
    BlockInfo,
    Load,
    block_info,
    divisors_desc,
    has_if_then_else,
    is_param,
    vars_in,
    vector_unsafe,
)


@dataclass
class Contraction:
    info: BlockInfo
    out_vars: list[str]  # iter var names indexing the output, outermost first
    factors: list  # the two multiplied expressions
    intermediates: set  # names of the buffers the PrimFunc allocates
    weights: set = frozenset()  # names of its layout-free parameters (weights, re-laid for free)


@dataclass
class Plan:
    j: str  # vectorized axis
    T: int  # vector tile
    i: str | None  # register-blocked axis
    Xb: int
    pack: tuple | None  # (buffer, dim of j, its other spatial vars) of the factor to repack
    phase: tuple | None = None  # (padded buffer, stride) to store split by x % stride
    e_j: int = 1  # extents of the j and (candidate) i axes
    e_i: int = 1
    depthwise: bool = False  # both factors carry j
    rows_outer: bool = False  # j-tiles inside the other output loops (the input read once)
    j_inner: bool = False  # depthwise with blocks of pixels: the channel tiles inside each block


@dataclass(frozen=True)
class Variant:
    """A choice the rule otherwise makes by heuristic, fixed for tuning (edlc.tune measures
    each variant of a kernel as one design space): the (T, Xb) register tile, how often
    per-tile padding may recompute the padded input before it becomes a kernel-wide pass, and
    a depthwise conv's loop order."""

    tiles: tuple[int, int] | None = None
    pad_redundancy: float | None = None
    j_inner: bool = False  # see Plan.j_inner


def _strip_cast(e):
    return e.value if isinstance(e, tirx.Cast) else e


def match(sch: s_tir.Schedule, rv) -> Contraction | None:
    """`O[s...] = O[s...] + X * Y` over spatial and reduction vars, O indexed by plain vars."""
    info = block_info(sch, rv)
    if info is None or not info.reduce or info.block.init is None:
        return None
    store = info.store
    if store is None or not all(isinstance(ix, tirx.Var) for ix in store.indices):
        return None
    out_vars = [ix.name for ix in store.indices]
    spatial = {v.name for v in info.spatial}
    if set(out_vars) != spatial or len(out_vars) != len(spatial):
        return None
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    for acc, prod in ((value.a, value.b), (value.b, value.a)):
        acc = _strip_cast(acc)
        if (isinstance(acc, Load) and acc.source.same_as(store.buffer)
                and all(a.same_as(b) for a, b in zip(acc.indices, store.indices))):
            prod = _strip_cast(prod)
            if isinstance(prod, tirx.Mul):
                func = sch.mod["main"]
                allocs = func.body.block.alloc_buffers
                weights = {p.name for p in func.params if is_layout_free(func, p)}
                return Contraction(info, out_vars, [prod.a, prod.b], {b.name for b in allocs},
                                   weights)
    return None


# a j-tile of the vector factor this small (T x reduction floats) stays in L1 whatever the
# register block, so a wider block (more accumulators) pays off; measured on 1x1 convs
_SMALL_TILE_BYTES = 12 * 1024


# a depthwise conv's taps (both factors carry j) are unrolled whole: each tap loads its own
# input vectors, which need registers beside the accumulators; and a j-tile as wide as 4
# vectors reads whole pixels of a narrow NHWC tensor. MobileNetV2's 3x3 depthwise convs, one
# core on Zen 3: 8 accumulators 1.1-2x faster than 14, and 4x2 mostly faster than 2x4
_DEPTHWISE_MAX_ACC = 8


def _budget(nv: int, cpu: CPU, depthwise: bool = False, spare: int = 1) -> int:
    """The most accumulators a register tile of `nv` vectors over j may have. They share the
    registers with the tile's weight vectors and a broadcast input (and `spare` more): one
    more spills accumulators every step (MobileNetV2's 1x1 convs with 2x7 accumulators run
    1.3-1.5x slower than with 2x4 on Zen 3, one core)."""
    regs = cpu.vector_regs - nv - 1 - spare
    return min(regs, _DEPTHWISE_MAX_ACC) if depthwise else regs


def _choose_tiles(e_j: int, e_i: int, cpu: CPU, e_r: int = 1 << 30,
                  depthwise: bool = False) -> tuple[int, int] | None:
    """(T, Xb): vector tile over j and register block over i, keeping enough independent
    accumulators to cover the FMA latency without spilling (`e_r`: reduction length)."""
    lanes, regs = cpu.lanes, cpu.vector_regs
    if e_i == 1:
        # no register axis (a matrix-vector product): the accumulators are one wide j-tile. A
        # narrow tile also walks the weight down a column, one page per row (1x768 @ 768x3072:
        # 3.7 ms with 16 lanes, 0.6 ms with 64, on AVX2)
        wide = [t for t in (n * lanes for n in range(8, 3, -1))
                if e_j % t == 0 and t // lanes <= regs // 2]
        if wide:
            return wide[0], 1
    if depthwise:
        # the most accumulators the budget allows, then the widest j-tile
        options = [(t, divisors_desc(e_i, max(1, _budget(t // lanes, cpu, True) // (t // lanes)))[0])
                   for t in (4 * lanes, 2 * lanes, lanes) if e_j % t == 0]
        if options:
            return max(options, key=lambda o: (o[0] // lanes * o[1], o[0]))
    tiles = [t for t in (3 * lanes, 2 * lanes, lanes) if e_j % t == 0]
    if not tiles:
        if e_j <= 2 * lanes:
            tiles = [e_j]
        else:
            tiles = [d for d in divisors_desc(e_j, 2 * lanes) if d >= max(2, lanes // 2)][:1]
    if not tiles:
        return None
    max_acc = regs // 2 + 2
    # a one-vector tile loads a broadcast per accumulator, so it runs below what its
    # accumulator count suggests: a tile of several vectors with 6 or more accumulators goes
    # first. MobileNetV2's 144->24 1x1 conv on 56x56, one core on Zen 3: 3 vectors x 2 rows
    # 0.34 ms, 1 vector x 8 rows 0.41-0.47 ms
    best, best_score = None, None
    for t in tiles:
        nv = -(-t // lanes)
        cap = max_acc
        if nv >= 2 and t * e_r * 4 <= _SMALL_TILE_BYTES:
            cap = max(max_acc, min(regs - 2, 14))
        if nv == 3 and not depthwise and e_r >= 64:
            # three vectors fill the registers with four rows (12 accumulators, 3 weight
            # vectors, a broadcast), where the reduction is long enough to pay for loading and
            # storing them. MobileNetV2's 1x1 convs, 2 threads in the model on Zen 3, 3 x 4
            # against 3 x 2 or 2 x 4: 0.75-0.93x from 144-576 channels, 0.90x from 64, 1.00x
            # from 32, 1.1-1.36x from 16-24
            cap = _budget(nv, cpu, spare=0)
        else:
            cap = min(cap, _budget(nv, cpu, depthwise))
        xb = divisors_desc(e_i, max(1, cap // nv))[0]
        nacc = nv * xb
        score = (nv > 1 and nacc >= 6, min(nacc, cap), nacc / (nv + xb))
        if best_score is None or score > best_score:
            best, best_score = (t, xb), score
    return best


def tile_options(p: Plan, cpu: CPU, limit: int = 4) -> list[tuple[int, int]]:
    """Register tiles other than the plan's worth measuring: whole vectors over j and, over i,
    the largest divisor of i's extent the register budget allows, or the one more block of
    rows that fits when every register is used (the last block partial where it does not
    divide i: MobileNetV2's 1x1 convs with 24 output channels, one core on Zen 3: 3 vectors x
    4 rows 0.23-0.29 ms against 3 x 2 0.31-0.37 ms; its 7x7 ones: 2 x 6 rows 1.05-1.3x faster
    than 2 x 4, and 2x slower on 14x14)."""
    options = []
    for t in (cpu.lanes, 2 * cpu.lanes, 3 * cpu.lanes, 4 * cpu.lanes):
        if p.e_j % t:
            continue
        nv = t // cpu.lanes
        fitting = divisors_desc(p.e_i, max(1, _budget(nv, cpu, p.depthwise) // nv))[:1]
        full = _budget(nv, cpu, spare=0) // nv  # every register used
        if nv >= 2 and not p.depthwise and p.e_i >= 4 * full and full not in fitting:
            fitting.append(full)
        for xb in fitting:
            if (t, xb) != (p.T, p.Xb) and nv * xb >= 4:
                options.append((nv * xb, t, xb))
    options.sort(reverse=True)
    return [(t, xb) for _, t, xb in options[:limit]]


def _access(factor, var: str) -> str:
    """How a factor reads along `var`: "contiguous" (var, or var + something, in its last dim),
    "pack" (plain var in another dim: worth repacking), or "gather"."""
    load = _strip_cast(factor)
    if not isinstance(load, Load):
        return "gather"
    dims = [d for d, ix in enumerate(load.indices) if var in {v.name for v in vars_in(ix)}]
    if len(dims) != 1:
        return "gather"
    ix = load.indices[dims[0]]
    plain = isinstance(ix, tirx.Var)
    if dims[0] == len(load.indices) - 1:
        if plain or (isinstance(ix, tirx.Add) and any(
                isinstance(t, tirx.Var) and t.name == var and var not in
                {v.name for v in vars_in(o)} for t, o in ((ix.a, ix.b), (ix.b, ix.a)))):
            return "contiguous"
        return "gather"
    return "pack" if plain else "gather"


def _stride(factor, var: str) -> tuple | None:
    """(buffer, s) when the factor reads its last dim at `var * s + r` (a strided conv)."""
    load = _strip_cast(factor)
    if not isinstance(load, Load):
        return None
    ix = load.indices[-1]
    terms = [ix.a, ix.b] if isinstance(ix, tirx.Add) else [ix]
    for t, rest in zip(terms, terms[::-1]):
        if (isinstance(t, tirx.Mul) and isinstance(t.a, tirx.Var) and t.a.name == var
                and isinstance(t.b, tirx.IntImm) and t.b.value > 1
                and (rest is t or var not in {v.name for v in vars_in(rest)})):
            return load.source, int(t.b.value)
    return None


def plan(c: Contraction, cpu: CPU, tiles: tuple[int, int] | None = None,
         j_inner: bool = False) -> Plan | None:
    """Choose the vector axis j, the register axis i and their tiles.

    j, in order of preference: the output's innermost axis if one factor reads it contiguously
    and it fills whole vectors (matmul columns, NCHW conv width, NHWC conv channels with HWIO
    weights); else the one axis only the weight-like factor carries, repacked if needed (NCHW
    conv channels when the width is narrow or strided, NHWC with OHWI weights, a transposed
    matmul operand); else the output's innermost axis (depthwise conv). `tiles` and `j_inner`
    are a Variant's choices; `j_inner` applies to a depthwise conv with blocks of pixels only.
    """
    info = c.info
    ext = {v.name: e for v, e in zip(info.vars, info.extents)}
    names = set(ext)
    out = [v for v in c.out_vars if ext[v] > 1]
    if not out:
        return None
    uses = [{v.name for v in vars_in(f)} & names for f in c.factors]
    private = [[v for v in out if v in uses[k] and v not in uses[1 - k]] for k in (0, 1)]
    kind = {(v, k): _access(c.factors[k], v) for k in (0, 1) for v in private[k]}
    phase = {}  # strided reads of an intermediate (padded) buffer: split it into phases
    for (v, k), a in kind.items():
        st = _stride(c.factors[k], v) if a == "gather" else None
        if st is not None and st[0].name in c.intermediates and \
                int(st[0].shape[-1]) % st[1] == 0:
            phase[(v, k)] = st
            kind[(v, k)] = "contiguous"
    choice = next(((v, k) for (v, k), a in kind.items() if v == out[-1] and a == "contiguous"
                   and ext[v] % cpu.lanes == 0), None)
    if choice is None:
        single = sorted(((v, k) for (v, k), a in kind.items()
                         if len(private[k]) == 1 and a in ("contiguous", "pack")),
                        key=lambda vk: vk[0] != out[-1])
        choice = single[0] if single else None
    if choice is None:
        choice = next(((v, k) for (v, k), a in kind.items() if a == "contiguous"), None)
    j, owner = choice if choice is not None else (out[-1], None)
    others = private[1 - owner] if owner is not None and private[1 - owner] else \
        [v for v in out if v != j]
    i = others[-1] if others else None
    e_i = ext[i] if i else 1
    depthwise = owner is None and all(j in u for u in uses)
    e_r = math.prod(ext[v.name] for v in info.reduce)
    ragged = False
    if i is not None and not depthwise:
        tiles, ragged = _ragged_tiles(ext[j], e_i, cpu, e_r, tiles)
    if tiles is None or ext[j] % tiles[0] or (e_i % tiles[1] and not ragged):
        tiles = _choose_tiles(ext[j], e_i, cpu, e_r, depthwise)
    if tiles is None:
        return None
    t, xb = tiles
    pack = None
    load = _strip_cast(c.factors[owner]) if owner is not None else None
    if owner is not None and kind[(j, owner)] == "pack":
        dim = next(d for d, ix in enumerate(load.indices) if isinstance(ix, tirx.Var)
                   and ix.name == j)
        pack = (load.source, dim, sorted(uses[owner] - {j}))
    elif (owner is not None and private[owner] == [j] and isinstance(load, Load)
          and isinstance(load.indices[-1], tirx.Var)
          and (load.source.name in c.weights or (i is not None and ext[i] >= 4 * xb))):
        # a weight already j-innermost: its rows are a whole row of the tensor apart, which
        # maps a tile onto few cache sets; a contiguous copy per tile keeps it in L1 (made
        # once when compiling for a weight, else worth it where the i axis reuses it enough).
        # A matrix-vector product reads its weight once, from memory: tile by tile it is one
        # stream the prefetcher follows, where a tile of each row was 1280 short reads 4 KB
        # apart (MobileNetV2's classifier, 1280 -> 1000, cold: 0.46 against 0.69 ms on one core,
        # 0.40 against 0.47 on two)
        pack = (load.source, len(load.indices) - 1, sorted(uses[owner] - {j}))
    # a tile packed inside the kernel is packed once per j-tile: those stay outermost
    rows_outer = owner is not None and (pack is None or pack[0].name in c.weights) and \
        _input_outweighs_weight(c.factors[1 - owner], c.factors[owner], ext[j] // t)
    i = i if xb > 1 else None
    return Plan(j, t, i, xb, pack, phase.get((j, owner)), ext[j], e_i, depthwise, rows_outer,
                j_inner and depthwise and i is not None)


# input rows a block of the rows-outer order reads (see `apply`): half of a 32 KiB L1
_ROW_BLOCK_BYTES = 16 * 1024


# Zen 3's L2 per core; a smaller L2 (Cortex-A: 256-512 KiB) only moves the point where the
# rows-outer order starts paying off
_L2_BYTES = 512 * 1024


def _bytes(factor) -> int:
    load = _strip_cast(factor)
    if not isinstance(load, Load):
        return 0
    return math.prod(int(d) for d in load.source.shape) * load.source.dtype.bits // 8


def _input_outweighs_weight(inputs, weight, j_tiles: int) -> bool:
    """Whether the j-tiles should run inside the other output loops: the default order (j-tiles
    outermost) reads the whole input once per j-tile, from L3 where it does not fit L2; rows
    outermost reads each input row once and the weight once per row instead, which wins when
    the weight stays in L2 and the input does not."""
    return j_tiles > 1 and _bytes(inputs) > _L2_BYTES // 2 and _bytes(weight) <= _L2_BYTES // 4


def _ragged_tiles(e_j: int, e_i: int, cpu: CPU, e_r: int,
                  tiles: tuple[int, int] | None) -> tuple[tuple[int, int] | None, bool]:
    """The register tile (`tiles` where it fits j) and whether its last block of rows is
    partial: where no block of two vectors divides the rows (a 1x1 conv over 7x7 = 49 pixels),
    2 vectors x 4 rows with a partial last block beat one vector x 7 rows (MobileNetV2's 7x7
    1x1 convs, one core on Zen 3: 0.19-0.50 vs 0.21-0.56 ms)."""
    if tiles is not None and not e_j % tiles[0]:
        return tiles, bool(e_i % tiles[1] and e_i >= 4 * tiles[1])
    best = _choose_tiles(e_j, e_i, cpu, e_r)
    if best is not None and best[0] <= cpu.lanes and not e_j % (2 * cpu.lanes) \
            and e_i >= 4 * _RAGGED_ROWS:
        return (2 * cpu.lanes, _RAGGED_ROWS), bool(e_i % _RAGGED_ROWS)
    return best, False


_RAGGED_ROWS = 4


def _j_innermost(ndim: int, dim: int, t: int):
    """Index map splitting `dim` by t, its outer part in place and its inner part last."""
    def fn(*idx):
        return [idx[d] // t if d == dim else idx[d] for d in range(ndim)] + [idx[dim] % t]

    return tirx.IndexMap.from_func(fn, ndim=ndim)


def _tile_major(ndim: int, dim: int, t: int):
    """Index map putting the j-tile first and its t lanes last: [j // t, other dims..., j % t],
    so the weight one tile reads is one contiguous block."""
    def fn(*idx):
        return [idx[dim] // t] + [idx[d] for d in range(ndim) if d != dim] + [idx[dim] % t]

    return tirx.IndexMap.from_func(fn, ndim=ndim)


# the block annotation TVM's SplitLayoutRewritePreproc moves out of a kernel into its own
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


def is_layout_free(func: tirx.PrimFunc, buffer) -> bool:
    """Whether `buffer` is a parameter every caller passes a weight for (the
    "layout_free_buffers" attribute, edlc.lower.pipeline.mark_weight_params): its layout is
    then edlc's to choose when compiling."""
    attrs = func.attrs
    free = attrs.get("layout_free_buffers") if attrs is not None else None
    if not free:
        return False
    index = next((k for k, p in enumerate(func.params) if buffer.same_as(p)), None)
    return index is not None and any(int(k) == index for k in free)


def _phase_split(ndim: int, stride: int):
    """x -> (x % stride, x // stride) on the last dim: a stride-s read becomes contiguous."""
    def fn(*idx):
        return [*idx[:-1], idx[-1] % stride, idx[-1] // stride]

    return tirx.IndexMap.from_func(fn, ndim=ndim)


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def loops_below(sch, rv, loop) -> list:
    """The loops of block `rv` nested inside `loop`."""
    loops = sch.get_loops(rv)
    target = sch.get(loop)
    for k, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return list(loops[k + 1:])
    return []


def _read_index(sch, rv, buffer) -> int:
    return next(k for k, r in enumerate(sch.get(rv).reads) if r.source.same_as(buffer))


def place_epilogue(sch: s_tir.Schedule, rv, tile, consumer) -> object:
    """Keep the contraction's accumulator tile in registers ("local") and write it out per
    `tile`: through its single elementwise `consumer` computed there when that works (bias,
    activation, residual add fused), else through a cache write. Returns the epilogue block."""
    if consumer is not None:
        try:
            sch.reverse_compute_at(consumer, tile)
            sch.set_scope(rv, 0, "local")
            return consumer
        except s_tir.ScheduleError:
            pass
    epilogue = sch.cache_write(rv, 0, "local")
    sch.reverse_compute_at(epilogue, tile)
    return epilogue


# padding recomputed per tile more often than this over the whole padded input costs more than
# the cache misses of reading it padded once. ResNet-18 on Zen 3, one core: the 7x7 and 14x14
# convs pad each input row once per output-channel tile (80-150x over) and run 1.1-1.6x faster
# padded once; those at 3-45x over run up to 1.6x slower padded once
_MAX_PAD_REDUNDANCY = 64


def _place_padding(sch: s_tir.Schedule, producer, loop, limit: float = _MAX_PAD_REDUNDANCY) -> None:
    """Compute the padding block under `loop` (the tile keeps its padded rows in cache) unless
    that recomputes the padded input more than `limit` times over; then it stays a kernel-wide
    pass."""
    size = math.prod(int(d) for d in sch.get(producer).writes[0].source.shape)
    trial = sch.copy()
    try:
        trial.compute_at(producer, loop)
    except s_tir.ScheduleError:
        return
    evaluated = math.prod(_extent(trial, lp) for lp in trial.get_loops(producer))
    if evaluated > limit * size:
        return
    sch.compute_at(producer, loop)
    # its innermost loop runs in vectors where the padding condition is the same across lanes
    # (the channels of NHWC): scalar, the copy cost more than the depthwise conv it feeds
    inner = loops_below(sch, producer, loop)
    block = sch.get(producer)
    last = block.iter_vars[-1]  # compute_at keeps the block's var order in its loops
    if inner and 1 < _extent(sch, inner[-1]) <= 64 and _extent(sch, inner[-1]) == int(last.dom.extent) \
            and not has_if_then_else(block.body.value, {last.var.name}):
        sch.vectorize(inner[-1])


def apply(sch: s_tir.Schedule, c: Contraction, p: Plan, cpu: CPU,
          pad_redundancy: float | None = None) -> None:
    """Schedule the contraction in place; raises ScheduleError where a step does not apply
    (the caller works on a copy of the schedule)."""
    rv, info = c.info.rv, c.info
    func = sch.mod["main"]
    if vector_unsafe(info.store.value):
        raise ValueError("the contraction reads through a call that cannot be vectorized")
    loop = {v.name: lp for v, lp in zip(info.vars, info.loops)}
    jo, ji = sch.split(loop[p.j], [None, p.T])
    io = ii = None
    if p.i is not None:
        io, ii = sch.split(loop[p.i], [None, p.Xb])
    # the loops the packed weight tile depends on go outermost, so that one parallel
    # iteration packs its tile once and reuses it across all the others
    pack_vars = set() if p.pack is None else set(p.pack[2])
    order = [v for v in c.out_vars if v != p.i]
    if p.rows_outer:
        order = [v for v in order if v != p.j] + [p.j]
    elif p.pack is not None:
        order = [v for v in order if v == p.j or v in pack_vars] + \
            [v for v in order if v != p.j and v not in pack_vars]
    outer = [jo if v == p.j else loop[v] for v in order]
    if p.j_inner:
        # each block of pixels runs all its channel tiles: the taps read whole pixels of the
        # input (all channels contiguous in NHWC) while they are in L1
        outer = [lp for lp in outer if lp != jo] + [io, jo]
        io = None
    if p.rows_outer and io is not None:
        # blocks of rows outside the j-tiles, each a few KiB of input that stays in L1 while
        # every j-tile reads it (a matrix product has no image rows to do that)
        e_r = math.prod(_extent(sch, loop[v.name]) for v in info.reduce)
        per = max(1, _ROW_BLOCK_BYTES // (4 * e_r * p.Xb))
        if per < _extent(sch, io):
            block, io = sch.split(io, [None, per])
            outer.insert(len(outer) - 1, block)
    reduce = [loop[v.name] for v in info.reduce]
    sch.reorder(*outer, *([io] if io is not None else []), *reduce,
                *([ii] if ii is not None else []), ji)
    n_pack = sum(1 for v in order if v == p.j or v in pack_vars) if p.pack else len(outer)
    if p.j_inner:  # the pixel blocks and channel tiles stay serial loops inside each row
        n_pack = len(outer) - 2
    # parallelize the fewest outer loops that give every core a few iterations
    n_par = 1 if p.rows_outer else n_pack
    while n_par < len(outer) - p.rows_outer and math.prod(
            _extent(sch, lp) for lp in outer[:n_par]) < 4 * cpu.cores:
        n_par += 1
    par = sch.fuse(*outer[:n_par]) if n_par > 1 else outer[0]
    rest = outer[n_par:]
    tile = rest[-1] if rest else par
    if io is not None:
        if not rest and _extent(sch, par) < 4 * cpu.cores and _extent(sch, io) > 1:
            par = tile = sch.fuse(par, io)
        else:
            tile = io
    if cpu.cores > 1 and _extent(sch, par) > 1:
        sch.parallel(par)

    if p.pack is not None and is_layout_free(func, p.pack[0]):
        # a weight: packed j-tile-major once, when compiling (edlc.lower.pipeline.prepack_weights)
        buffer, dim, _ = p.pack
        packed = sch.cache_read(rv, _read_index(sch, rv, buffer), "global")
        sch.transform_layout(packed, ("write", 0), _tile_major(len(buffer.shape), dim, p.T))
        sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)
    elif p.pack is not None:
        buffer, dim, _ = p.pack
        packed = sch.cache_read(rv, _read_index(sch, rv, buffer), "global")
        if dim != len(buffer.shape) - 1:
            sch.transform_layout(packed, ("write", 0),
                                 _j_innermost(len(buffer.shape), dim, p.T))
        sch.compute_at(packed, par, preserve_unit_loops=True)
        pack_loops = loops_below(sch, packed, par)
        if len(pack_loops) == len(buffer.shape) and dim != len(pack_loops) - 1:
            sch.reorder(*[lp for d, lp in enumerate(pack_loops) if d != dim], pack_loops[dim])
        elif len(pack_loops) == len(buffer.shape):
            sch.vectorize(pack_loops[-1])

    # padding per tile of rows: above the j-tiles where they run inside the rows
    inner_rows = rest[:-1] if p.rows_outer else rest
    pad_at = inner_rows[-1] if inner_rows else par
    for producer in sch.get_producers(rv):
        block = sch.get(producer)
        if (len(sch.get_consumers(producer)) == 1 and isinstance(block.body, tirx.BufferStore)
                and has_if_then_else(block.body.value) and len(sch.get_loops(producer)) > 0
                and all(iv.iter_type == tirx.IterVar.DataPar for iv in block.iter_vars)):
            if p.depthwise:
                # each tap reads its input vector straight from the unpadded tensor: the
                # condition is the same across the lanes (channels), and a padded copy per row
                # of output rewrote every input row 3 times (MobileNetV2's 3x3 depthwise convs,
                # one core on Zen 3: 1.1-1.7x faster inlined)
                sch.compute_inline(producer)
            else:
                _place_padding(sch, producer, pad_at,
                               _MAX_PAD_REDUNDANCY if pad_redundancy is None else pad_redundancy)

    if p.phase is not None:
        buffer, stride = p.phase
        writer = next(b for b in sch.get_producers(rv)
                      if sch.get(b).writes[0].source.same_as(buffer))
        sch.transform_layout(writer, ("write", 0), _phase_split(len(buffer.shape), stride))

    consumers = sch.get_consumers(rv)
    consumer = None
    if not is_param(func, info.store.buffer) and len(consumers) == 1:
        cons = block_info(sch, consumers[0])
        consumer = consumers[0] if cons is not None and cons.is_spatial else None
    epilogue = place_epilogue(sch, rv, tile, consumer)
    j_dim = c.out_vars.index(p.j)
    if j_dim != len(c.out_vars) - 1:
        sch.transform_layout(rv, ("write", 0), _j_innermost(len(c.out_vars), j_dim, p.T))

    _vectorize(sch, ji, cpu.lanes)
    if ii is not None:
        sch.unroll(ii)
    sch.decompose_reduction(rv, reduce[0])
    below = loops_below(sch, epilogue, tile)
    if below and 1 < _extent(sch, below[-1]) <= 64 and not vector_unsafe(sch.get(epilogue).body):
        _vectorize(sch, below[-1], cpu.lanes)


def _vectorize(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize `loop`; a tile of 3 vectors as 3 unrolled vectors: LLVM widens a 24-lane
    vector to 32 lanes, and 12 such accumulators spill (20x slower)."""
    n = _extent(sch, loop)
    if n > lanes and n % lanes == 0 and n & (n - 1):
        outer, loop = sch.split(loop, [None, lanes])
        sch.unroll(outer)
    sch.vectorize(loop)
