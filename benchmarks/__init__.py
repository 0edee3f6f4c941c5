"""Benchmark harness: WebSocket servers under the same load (``python -m benchmarks.run``)."""
