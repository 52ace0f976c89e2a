"""Common library of the scalper services: settings, messages, bus, database, time and symbols."""
