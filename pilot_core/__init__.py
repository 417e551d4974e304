"""Shared building blocks of Pilot: typed configs, user errors, atomic artifacts, manifests, tiny models.

Every stage library (data_curation, training, wsd_inference, evaluation, release) may import from here;
nothing here imports a stage, Prefect, or (at import time) torch.
"""
