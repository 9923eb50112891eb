"""Model soups, WiSE-FT sweeps and ensembles over live models."""
