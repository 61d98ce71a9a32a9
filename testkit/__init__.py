"""Test and benchmark helpers that do not ship in the wheel: real worker processes, private
Redis/PostgreSQL servers, network namespaces, throwaway databases, the chaos harness, load clients.

Importable from a checkout (the editable install puts the repository root on the path); the fake
provider servers that users may load-test against stay in `blogqueue.testing`.
"""
