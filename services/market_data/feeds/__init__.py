"""Feeds of M1 bars behind one interface (base.Feed): synthetic, replay of a file, and later MT5."""
