"""Fleet: the EdgeLink server for the sites' agents, site status, telemetry history, events and
schedule delivery."""
