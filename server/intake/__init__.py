"""Upload intake: an update streams to the disk spool and is inspected chunk by chunk before it may fold."""
