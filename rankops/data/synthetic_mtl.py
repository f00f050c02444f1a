"""Planted data sets of the multi-task recipes (youtube, linkedin_feed, csrec, spotify, snapchat_ads, taobao, kuaishou)."""

from __future__ import annotations

PLANTED: dict = {}
