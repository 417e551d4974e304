"""Shared ground of Pilot: typed configs, user errors, atomic artifacts, manifests, stage keys, prompt records,
judging rubrics and parsers, the validation report contract, the demo world, and the models layer
(`pilot_core.models`).

Every stage library (data_curation, training, wsd_inference, evaluation, release) may import from here;
nothing here imports a stage, Prefect, or (at import time) torch. tests/test_layering.py holds these rules.
"""
