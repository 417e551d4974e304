"""GenerAlign curation: sources -> normalise -> score and filter (with reasons) -> dedup -> decontaminate -> mix
-> a versioned dataset directory with its excluded table, manifest and data card; the data team's review; and the
responses and preference pairs the pilot trains on."""
