"""Phoenyra BESS wire contracts, generated from the .proto files beside this package."""
