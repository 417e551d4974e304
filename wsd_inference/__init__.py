"""Weak-to-Strong Decoding and the test-time methods it is compared with.

`methods` is the registry (one entry per method); `runner` runs any of them over a prompt file, in-process or
with the base on a server. Import submodules directly; this package stays light so the CLI starts fast.
"""
