"""Seeded synthetic models in the real file formats.

Hubs are unreachable on the project's machines, so tests, benchmarks and the app's offline
stand-in build their models here: tiny ones for tests, real-architecture shapes (with random
weights, which cost the same to run) for speed and memory work.
"""
