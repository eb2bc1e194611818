"""Hardware-in-the-loop battery simulator: a BESS behind an inverter, over Modbus TCP and MQTT."""
