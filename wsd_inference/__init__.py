"""Weak-to-Strong Decoding and the test-time methods it is compared with.

Import submodules directly (`wsd_inference.engine`, ...); this package stays light so the CLI starts fast.
"""
