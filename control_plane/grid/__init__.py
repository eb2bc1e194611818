"""Grid state: frequency per area from the fleet's measurements, load and tie-line flows from a
configurable source, grid constraints with validity windows (see service.py)."""
