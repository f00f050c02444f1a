"""Planted data sets of the news and session recipes (mtrec, m2trec, plm_nr)."""

from __future__ import annotations

PLANTED: dict = {}
