"""Ray job entrypoints (``python -m pretextlab.jobs.<name>``) and the ``pretextlab`` CLI."""
