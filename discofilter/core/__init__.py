"""The sans-I/O core: bytes and dicts in, bytes and decisions out.

Rule 1: nothing in this package does I/O or imports asyncio, aiohttp or kubernetes_asyncio
(enforced by import-linter, see pyproject.toml). Everything here is a plain class or function that
can be fed input split any way, tested alone and benchmarked without sockets.
"""
