"""Resend failed Capillary communications at most once per messageId."""
