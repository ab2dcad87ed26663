"""Test and demo support: real services on loopback, made to misbehave on purpose.

This package owns the helpers that tests, the demo and the benchmarks use to stand up
the world around the agent: a private mosquitto broker (:mod:`.mosquitto`), a loopback
TCP proxy that can stall or drop connections (:mod:`.tcpproxy`), and the simulated
thin-edge side. Nothing in the agent itself imports from here, and nothing here may
reach beyond 127.0.0.1.
"""
