"""data_curation"""
