"""The edge agent beside each battery: acquisition, local safety guard, schedule execution,
store-and-forward and the EdgeLink uplink to the control plane."""

__version__ = "0.1.0"
