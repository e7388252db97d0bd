"""Fuzz cases from a `random.Random`: random graphs (valid, or mutated), mutated seed models,
and byte-mutated files. The fuzz script and the hypothesis tests share these."""

from __future__ import annotations

import random
from collections.abc import Mapping

import onnx

from edlc.testing.fuzz.check import Case
from edlc.testing.fuzz.generate import random_graph
from edlc.testing.fuzz.mutate import mutate_bytes, mutate_model

KINDS = ("graph", "mutated-graph", "mutated-seed", "bytes")


def graph_case(rng: random.Random, mutate: bool = False, compile: bool = False,
               empty_dims: bool = True) -> Case:
    rg = random_graph(rng, empty_dims=empty_dims)
    model, log = (mutate_model(rg.model, rng) if mutate else (rg.model, []))
    label = "graph " + ",".join(rg.log) + ("; " + "; ".join(log) if log else "")
    return Case(model.SerializeToString(), dict(rg.input_shapes), compile, label)


def seed_case(rng: random.Random, seeds: Mapping[str, onnx.ModelProto]) -> Case:
    name = rng.choice(sorted(seeds))
    model, log = mutate_model(seeds[name], rng)
    return Case(model.SerializeToString(), label=f"seed {name}; " + "; ".join(log))


def bytes_case(rng: random.Random, seeds: Mapping[str, onnx.ModelProto]) -> Case:
    name = rng.choice(sorted(seeds))
    data = mutate_bytes(seeds[name].SerializeToString(), rng)
    return Case(data, label=f"bytes of {name}")


def random_case(rng: random.Random, seeds: Mapping[str, onnx.ModelProto], kind: str | None = None) -> Case:
    """A case of `kind` (one of KINDS; random when None)."""
    kind = kind or rng.choice(KINDS)
    if kind == "graph":
        return graph_case(rng)
    if kind == "mutated-graph":
        return graph_case(rng, mutate=True)
    if kind == "mutated-seed":
        return seed_case(rng, seeds)
    return bytes_case(rng, seeds)
