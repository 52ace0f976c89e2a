"""Tests of data import: every M1 format users bring, `scalper data check`."""
