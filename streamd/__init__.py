"""streamd: message sources (SQS, Redis, an in-process broker) as live HTTP streams."""

__version__ = "0.1.0"
