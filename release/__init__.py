"""Release: the gate decides from the validation report; a passing checkpoint is published to the registry
(immutable versions, a champion alias) with its model card, and optionally pushed to the Hub."""
