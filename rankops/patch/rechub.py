"""torch-rechub: its layers on rankops ops (filled in below)."""
