"""Local stand-ins for remote services, used by integration tests and the local demo."""
