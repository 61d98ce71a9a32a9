"""The HTTP service: a thin Starlette layer over blogqueue.Client."""
