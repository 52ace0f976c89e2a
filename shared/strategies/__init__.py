"""The pure strategy library: indicators, the strategy contract, the strategies and their catalog (no I/O, no clock)."""
