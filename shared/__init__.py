"""Code every experiment branch shares: the extractor interface and the unified model."""
