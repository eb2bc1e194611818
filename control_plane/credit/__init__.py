"""Counterparty credit: master data with limits, exposure from the exchange's trades and open
orders, settlements, utilisation alerts and the exchange's pre-trade credit check.

See `service.py` for the exposure definition and `api.py` for the routes.
"""
