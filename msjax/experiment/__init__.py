"""The experiment a run describes: its config, checked once before anything is written."""
