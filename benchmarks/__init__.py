"""Latency and throughput benchmarks: model, server, pipeline, face tracking."""
