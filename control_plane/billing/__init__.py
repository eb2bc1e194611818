"""Billing: monthly invoices per counterparty from the exchange's trades, gapless numbers, PDFs."""
