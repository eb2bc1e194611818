"""Battery schedule optimisation: plans (model.py), back-tests (backtest.py), the HTTP API."""
