"""The investigator's coordinator: federation roster, fan-out client, query planning and reports."""
