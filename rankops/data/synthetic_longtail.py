"""Planted data set of the monolith recipe: long-tail raw 64-bit ids."""

from __future__ import annotations

PLANTED: dict = {}
