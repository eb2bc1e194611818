"""Market data: day-ahead prices from ENTSO-E, aWattar and files, their store, the scheduled
feed and the derived figures (mark, EMA, VWAP). See `models.py` for the shared vocabulary."""
