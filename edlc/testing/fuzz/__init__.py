"""Fuzzing edlc's front door (tests/fuzz and fuzz/run.py share this): seed models, mutations of
models and of their bytes, random valid graphs, the per-case check, and a child process that
runs cases with a time and memory limit so hangs and crashes are findings, not lost runs."""
