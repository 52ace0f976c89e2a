"""Feeds of M1 bars behind one interface (base.Feed): synthetic, replay of a file, and MT5 (through the executor)."""
