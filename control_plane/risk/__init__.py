"""Risk: portfolio positions, VaR / expected shortfall, limits and the Kupiec back-test."""
