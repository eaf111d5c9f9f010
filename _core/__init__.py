"""Compiled hot path. Import these modules only through ``deltaforge._accel``."""
