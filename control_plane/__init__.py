"""The central control plane: fleet (EdgeLink server), the internal exchange, market data,
forecasts, optimisation, risk, credit, billing and the trading bridge, in one process."""

__version__ = "0.1.0"
