"""Adapters translate platform events into `IncomingMessage` and send `Reply` objects back."""
