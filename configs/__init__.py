"""Configuration files: get_config() per original config, plus fixture, tiny and demo variants."""
