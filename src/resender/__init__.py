"""Resend failed Capillary communications exactly once per messageId."""
