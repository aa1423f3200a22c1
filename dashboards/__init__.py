"""Grafana dashboards and Prometheus alert rules for callerid, and the code that generates them."""

from __future__ import annotations
