"""Shared by every stage: params, errors, the stage entry point, atomic io, timings, the stage door."""
