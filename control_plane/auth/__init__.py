"""Access control: API keys with roles, HMAC-signed requests, FastAPI dependencies."""
