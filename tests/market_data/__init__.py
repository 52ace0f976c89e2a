"""Tests of the market-data service, its feeds, the M1 loaders and the levels."""
